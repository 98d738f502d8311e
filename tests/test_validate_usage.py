"""The validator as users meet it: usage errors, a raising candidate, where a case goes wrong, real conventions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import run_pytest

import latte_ref
from latte_ref import cli
from latte_ref.testing import CandidateError, UsageError, load_candidate, validate
from latte_ref.testing.matrix import missing_framework


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("mylate:causal_loop", "no module named 'mylate'"),
        ("latte_ref:casual", "has no attribute 'casual' (did you mean 'causal'?)"),
        ("latte_ref:__version__", "not a callable"),
        ("latte_ref.causal", "expected MODULE:FUNCTION"),
    ],
)
def test_a_name_that_does_not_resolve_is_a_usage_error_with_status_2(spec, says, capsys):
    with pytest.raises(CandidateError):
        load_candidate(spec)
    assert cli.main(["validate", spec, "--form", "causal", "--case", "t1"]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) <= 2 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", "nosuch"],
        ["--dtype", "float8"],
        ["--case", "t2"],
    ],
)
def test_bad_options_are_usage_errors_too(args, capsys):
    assert cli.main(["validate", "latte_ref:causal", "--form", "causal", *args]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(UsageError):
        validate(latte_ref.causal, form="causal", logit_scale="sqrt")


@pytest.mark.parametrize(("name", "guess"), [("pytorch", "torch"), ("nunpy", "numpy"), ("strict", "array_api_strict")])
@pytest.mark.parametrize("command", [["check"], ["validate", "latte_ref:causal", "--form", "causal"]])
def test_a_misnamed_backend_gets_a_did_you_mean(command, name, guess, capsys):
    try:
        status = cli.main([*command, "--backend", name])
    except SystemExit as exc:  # an argparse error in check's own options
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert f"unknown backend {name!r} (did you mean {guess!r}?)" in err, err
    assert len(err.splitlines()) <= 3 and "Traceback" not in err, err


def test_the_plugin_reports_a_wrong_name_as_one_usage_error(tmp_path):
    run = run_pytest(tmp_path, "--latte-impl", "mylate:causal_loop")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "ERROR: --latte-impl mylate:causal_loop: no module named 'mylate'" in run.stderr
    assert "failed" not in run.stdout and "Traceback" not in run.stderr


def _raises_in_own_code(q, k, v):
    return q.softmax(dim=-1)  # PyTorch code given NumPy arrays


def test_a_raising_candidate_is_named_with_its_own_line_and_a_backend_hint(tmp_path, capsys):
    report = validate(_raises_in_own_code, form="causal", cases=["t1"], save_dir=tmp_path)
    note = report.results[0].note
    line = _raises_in_own_code.__code__.co_firstlineno + 1
    assert note.startswith("raised AttributeError: 'numpy.ndarray' object has no attribute 'softmax'"), note
    assert f"test_validate_usage.py:{line}" in note
    if missing_framework("import torch") is None:
        assert "try --backend torch" in note
    assert "Traceback" in report.results[0].traceback and "Traceback" not in str(report)
    status = cli.main(
        ["validate", "latte_ref:causal", "--form", "causal", "--case", "t1", "--traceback", "--save-dir", str(tmp_path)]
    )
    assert status == 0 and "Traceback" not in capsys.readouterr().out


def test_a_candidate_returning_another_backends_array_is_told_which(tmp_path):
    pytest.importorskip("torch")
    import torch

    def returns_torch(q, k, v):
        return torch.from_numpy(latte_ref.causal(q, k, v))

    note = validate(returns_torch, form="causal", cases=["t1"], save_dir=tmp_path).results[0].note
    assert "returned a torch.Tensor, not a numpy array" in note and "try --backend torch" in note


def test_first_mismatch_names_batch_token_head_and_values(tmp_path):
    def wrong_from_token_7_head_1(q, k, v, mask=None):
        y = latte_ref.causal(q, k, v, mask=mask)
        y[..., 7:, 1, :] += 0.01
        return y

    report = validate(
        wrong_from_token_7_head_1, form="causal", with_mask=True, cases=["mask_right", "t1"], save_dir=tmp_path
    )
    failed, passed = report.results
    m = failed.first_mismatch
    assert (m["batch"], m["t"], m["head"]) == ([0], 7, 1) and abs(m["actual"] - m["expected"] - 0.01) < 1e-6
    assert passed.passed and passed.first_mismatch is None
    text = str(report)
    assert "first mismatch: batch 0, t 7, head 1" in text and "right padding (real tokens first)" in text
    row = report.to_json()["results"][0]
    assert row["first_mismatch"]["t"] == 7 and row["description"] == failed.description


def _scaled_port(q, k, v):
    s = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps the dtype of q
    return latte_ref.causal(q * s, k * s, v)


def test_logit_scale_makes_the_reference_latte_of_scaled_logits(tmp_path):
    cases = ["t1", "t_prime_37", "one_latent"]
    assert validate(_scaled_port, form="causal", logit_scale="inv_sqrt_l", cases=cases, save_dir=tmp_path).passed
    assert not validate(_scaled_port, form="causal", cases=cases[1:], save_dir=tmp_path).passed
    half = validate(lambda q, k, v: latte_ref.causal(q * 0.5, k * 0.5, v), form="causal", logit_scale=0.5, cases=cases)
    assert half.passed and "s = 0.5" in str(half)
    assert "Latte(s*q, s*k, v), s = inv_sqrt_l" in str(
        validate(_scaled_port, form="causal", logit_scale="inv_sqrt_l", cases=["t1"])
    )


@pytest.mark.parametrize("axes", [0, 1, 2])
def test_batch_axes_feeds_every_case_with_exactly_that_many(axes, tmp_path):
    def exactly(q, k, v, mask=None):
        assert q.ndim == 3 + axes and (mask is None or mask.ndim == 1 + axes), q.shape
        return latte_ref.causal(q, k, v, mask=mask)

    names = ["t1", "batch_dims", "mask_random", "large_logits"]
    report = validate(exactly, form="causal", with_mask=True, batch_axes=axes, cases=names, save_dir=tmp_path)
    assert report.passed, report
    assert f"batch axes: exactly {axes}" in str(report)


def test_an_all_pass_run_writes_nothing_and_names_no_worst_case(tmp_path):
    report = validate(latte_ref.causal, form="causal", cases=["t1", "batch_dims"], save_dir=tmp_path)
    assert report.passed and report.worst_npz is None and report.reproduce is None
    assert os.listdir(tmp_path) == [] and "worst case" not in str(report)
    assert [r.shape for r in report.results] == ["T=1 H=2 L=3 D=4", "B=2x3 T=11 H=2 L=3 D=5"]


def test_artefacts_of_different_candidates_and_dtypes_do_not_overwrite(tmp_path):
    def off(q, k, v):
        return latte_ref.causal(q, k, v) * q.dtype.type(1.01)

    def off_too(q, k, v):
        return latte_ref.causal(q, k, v) * q.dtype.type(0.99)

    paths = {
        validate(fn, form="causal", dtype=dtype, cases=["t1"], save_dir=tmp_path).worst_npz
        for fn in (off, off_too)
        for dtype in ("float32", "float64")
    }
    assert len(paths) == 4 and all("float" in os.path.basename(p) for p in paths)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_jax_float32_and_float64_run_in_one_process_whatever_x64_was(tmp_path):
    pytest.importorskip("jax")
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from latte_ref.testing import validate
        from latte_ref.testing.references import native_jax

        def default_dtype_arrays(q, k, v):  # jnp.zeros without a dtype: float64 under x64
            return native_jax.causal(q, k, v) + jnp.zeros(v.shape)

        for before in (False, True):
            jax.config.update("jax_enable_x64", before)
            for dtype in ("float64", "float32"):
                report = validate(default_dtype_arrays, form="causal", backend="jax", dtype=dtype,
                                  cases=["t1", "t_prime_37"])
                assert report.passed, report
            assert jax.config.read("jax_enable_x64") == before
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_the_json_report_carries_the_new_settings(tmp_path):
    json_path = tmp_path / "r.json"
    status = cli.main(
        [
            "validate",
            "test_validate_usage:_scaled_port",
            "--form",
            "causal",
            "--case",
            "t1",
            "--logit-scale",
            "inv_sqrt_l",
            "--batch-axes",
            "1",
            "--json",
            str(json_path),
        ]
    )
    settings = json.loads(json_path.read_text())["settings"]
    assert status == 0 and settings["logit_scale"] == "inv_sqrt_l" and settings["batch_axes"] == 1
