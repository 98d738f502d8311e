"""Gradients in the toolkit: ``validate(..., grad=True)`` / ``--grad`` / ``--latte-grad``, and ``latte-ref check``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_pytest

import latte_ref
from latte_ref import cli
from latte_ref.commands import check
from latte_ref.testing import UsageError, case_names, make_case, validate
from latte_ref.testing.grad_cases import GRAD_CASES
from latte_ref.testing.gradients import gradient_error
from latte_ref.testing.tolerance import GRAD_TOLERANCES

TIED = ["tied_keys_zero", "tied_keys_grid", "tied_keys_padded", "tied_state_cuts"]


def _short(form: str, **flags: bool) -> list[str]:
    """Every case the flags give with grad, but the long one (a per-token backward over 4096 tokens takes minutes)."""
    return [n for n in case_names(form, with_grad=True, **flags) if n != "long"]


def test_the_gradient_cases_are_there_with_grad_and_tie_as_they_claim():
    assert not set(TIED) & set(case_names("causal", with_mask=True, with_state=True))
    assert case_names("causal", with_mask=True, with_state=True, with_grad=True)[-4:] == TIED
    assert case_names("bidirectional", with_state=True, with_grad=True)[-2:] == ["tied_keys_zero", "tied_keys_grid"]
    for name in TIED:
        case = make_case(name, "causal", seed=3)
        assert case.description == GRAD_CASES[name].description
        keys = case.k.reshape(-1, case.k.shape[-3], *case.k.shape[-2:])  # [B, T, H, L]
        assert all(np.unique(keys[b, :, h, n]).size < keys.shape[1] // 2 for b, _, h, n in np.ndindex(keys.shape))
        assert np.all(make_case(name, "causal", seed=3).q == case.q)
    assert np.all(make_case("tied_keys_zero", "causal").k == 0.0)
    assert make_case("tied_state_cuts", "causal").cuts == (1, 17, 32)
    padded = make_case("tied_keys_padded", "causal")
    assert padded.mask is not None and not padded.mask.all() and np.all(padded.k == 0.0)


@pytest.mark.parametrize("spec", ["latte_ref:recurrent", "latte_ref:causal"])
def test_latte_ref_passes_grad_on_torch_float64(spec, tmp_path):
    """The recurrence and the chunked form (whose tied-key backward was fixed) against the definition's gradient."""
    pytest.importorskip("torch")
    names = _short("causal", with_mask=True, with_state=True)
    report = validate(
        spec,
        form="causal",
        backend="torch",
        dtype="float64",
        with_mask=True,
        with_state=True,
        grad=True,
        cases=names,
        save_dir=tmp_path,
    )
    assert report.passed, report
    assert [r.name for r in report.run] == names and set(TIED) <= set(names)
    assert all(r.grad_error is not None and r.grad_error <= GRAD_TOLERANCES["float64"] for r in report.run), report
    assert "grad err" in str(report) and "gradients: of sum(y * w)" in str(report)


@pytest.mark.parametrize(
    ("spec", "form", "dtype", "names"),
    [
        ("latte_ref:bidirectional", "bidirectional", "float64", ["t_prime_37", "mask_left", *TIED[:3]]),
        ("latte_ref:step", "step", "float64", ["t_prime_37", "tied_keys_zero", "tied_keys_padded"]),
        ("latte_ref:causal", "causal", "float32", ["t_prime_131", "large_logits", "tied_keys_grid", "tied_state_cuts"]),
        ("latte_ref:causal", "causal", "bfloat16", ["t_prime_37", "tied_keys_grid"]),
    ],
)
def test_every_form_and_dtype_passes_grad_on_torch(spec, form, dtype, names, tmp_path):
    pytest.importorskip("torch")
    flags = {"with_mask": True, "with_state": form == "causal"}
    report = validate(spec, form=form, backend="torch", dtype=dtype, grad=True, cases=names, save_dir=tmp_path, **flags)
    assert report.passed, report
    assert all(r.grad_error is not None and 0.0 <= r.grad_error <= r.grad_tolerance for r in report.run), report


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.slow)])
def test_latte_ref_passes_grad_on_jax(dtype, tmp_path):
    """In float32 the reference gradient is still taken in float64, with x64 turned on for it alone.

    One case: JAX compiles every operation of a backward anew (float64 is run by ``latte-ref check``, and with --slow).
    """
    jax = pytest.importorskip("jax")
    x64 = jax.config.read("jax_enable_x64")
    report = validate(
        "latte_ref:recurrent", form="causal", backend="jax", dtype=dtype, grad=True, cases=["tied_keys_zero"]
    )
    assert report.passed, report
    assert 0.0 <= report.results[0].grad_error <= GRAD_TOLERANCES[dtype] / 100, report
    assert jax.config.read("jax_enable_x64") == x64


@pytest.mark.parametrize("bug", ["scaled_key_gradient", "key_detached", "ties_counted_twice", "state_detached"])
def test_a_wrong_backward_passes_without_grad_and_is_caught_with_it(bug, tmp_path):
    planted = pytest.importorskip("planted_grad_bugs")
    candidate, extra, catcher = planted.PLANTED_GRAD[bug]
    names = [
        "t_prime_37",
        "large_logits",
        "tied_keys_zero",
        "tied_keys_grid",
        *(["state_cuts", "tied_state_cuts"] if extra.get("with_state") else []),
    ]
    settings = {"form": "causal", "backend": "torch", "dtype": "float64", "cases": names, "save_dir": tmp_path}
    assert validate(candidate, **settings, **extra).passed  # the outputs are exact
    report = validate(candidate, **settings, **extra, grad=True)
    failed = {r.name for r in report.results if not r.passed}
    assert not report.passed and catcher in failed, report
    assert all(r.max_abs <= r.tolerance.max_abs for r in report.run)  # only the gradients fail
    if bug == "ties_counted_twice":  # random keys never tie: only the tied cases see it
        assert failed == {"tied_keys_zero", "tied_keys_grid"}, report
    if bug == "state_detached":  # one call and the gradient is exact: only the cut cases see it
        assert failed == {"state_cuts", "tied_state_cuts"}, report
    if bug in ("scaled_key_gradient", "key_detached", "ties_counted_twice"):
        assert {r.grad_worst for r in report.run if not r.passed} == {"dk"}, report
    assert "the backward disagrees" in str(report) and report.reproduce is not None and "--grad" in report.reproduce
    saved = np.load(report.worst_npz)
    assert {"dq_expected", "dk_expected", "dv_expected", "dq_actual", "dk_actual", "dv_actual"} <= set(saved.files)


def test_grad_on_a_backend_without_autograd_is_a_usage_error(capsys):
    with pytest.raises(UsageError, match="backend 'numpy' has no autograd: use --backend torch or --backend jax"):
        validate(latte_ref.causal, form="causal", grad=True)
    assert cli.main(["validate", "latte_ref:causal", "--form", "causal", "--grad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latte-ref validate: error: --grad compares gradients") and "Traceback" not in err


def test_the_command_line_takes_grad_and_writes_the_gradient_errors(tmp_path, capsys):
    pytest.importorskip("torch")
    common = ["--form", "causal", "--backend", "torch", "--dtype", "float64", "--grad", "--save-dir", str(tmp_path)]
    json_path = tmp_path / "report.json"
    good = ["validate", "latte_ref:recurrent", *common, "--case", "t1", "--case", "tied_keys_grid"]
    assert cli.main([*good, "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "grad err" in out and "tied_keys_grid" in out
    saved = json.loads(json_path.read_text())
    assert saved["settings"]["grad"] is True
    assert [r["grad_worst"] in ("dq", "dk", "dv") for r in saved["results"]] == [True, True]
    assert all(0.0 <= r["grad_error"] <= r["grad_tolerance"] == 1e-9 for r in saved["results"])
    bad = ["validate", "planted_grad_bugs:key_detached", *common, "--case", "t_prime_37"]
    assert cli.main(bad) == 1
    out = capsys.readouterr().out
    assert "dk is off by" in out and "--grad" in out.splitlines()[-1]
    help_text = subprocess.run(
        [sys.executable, "-m", "latte_ref", "validate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--grad" in help_text and "torch or jax only" in " ".join(help_text.split())


def test_the_pytest_plugin_takes_latte_grad(tmp_path):
    pytest.importorskip("torch")
    torch64 = ["--latte-backend", "torch", "--latte-dtype", "float64"]
    good = run_pytest(
        tmp_path, "--latte-impl", "latte_ref:recurrent", *torch64, "--latte-grad", "-k", "t1 or tied_keys_zero"
    )
    assert good.returncode == 0 and "2 passed" in good.stdout, good.stdout
    impl = ["--latte-impl", "planted_grad_bugs:key_detached", *torch64]
    bad = run_pytest(tmp_path, *impl, "--latte-grad", "-k", "t_prime_37")
    assert bad.returncode == 1 and "1 failed" in bad.stdout and "--grad" in bad.stdout, bad.stdout
    numpy = run_pytest(tmp_path, "--latte-impl", "latte_ref:causal", "--latte-grad")
    assert numpy.returncode == pytest.ExitCode.USAGE_ERROR and "has no autograd" in numpy.stderr


def test_check_reports_the_gradient_error_of_every_form_with_autograd(tmp_path, capsys):
    names = [name for name in ("numpy", "torch") if name == "numpy" or _installed(name)]
    rows, _ = check.run_checks(names, seq_len=17)
    for row in rows:
        with_grad = row.backend in ("torch", "jax") and row.dtype == "float64"
        assert (row.grad_error is not None) == with_grad, row
        if with_grad:
            assert row.grad_error <= row.grad_tolerance == 1e-9 and row.passed, row
    table = check.format_table(rows)
    assert "grad err" in table.splitlines()[0]
    json_path = tmp_path / "check.json"
    assert cli.main(["check", "--backend", "numpy", "--seq-len", "11", "--json", str(json_path)]) == 0
    assert "grad err" in capsys.readouterr().out
    saved = json.loads(json_path.read_text())["rows"]
    assert all("grad_error" in r and r["grad_error"] is None for r in saved)


def test_check_inputs_tie_and_a_gradient_failure_fails_check(monkeypatch, capsys):
    pytest.importorskip("torch")
    _, k, v, w, _ = check.make_grad_inputs(41)
    assert np.unique(k[0]).size <= 7 and np.all(k[1, :13] == 0.0) and w.shape == v.shape
    forms = dict(check.FORMS)
    forms["recurrent"] = lambda q, k, v, mask: latte_ref.recurrent(q, k.detach(), v, mask=mask)
    monkeypatch.setattr(check, "FORMS", forms)
    assert cli.main(["check", "--backend", "torch", "--seq-len", "13"]) == 1
    failing = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert len(failing) == 1 and "float64" in failing[0] and "recurrent" in failing[0], failing


def test_gradient_error_is_relative_to_the_largest_reference_gradient():
    expected = (np.zeros(3), np.array([1.0, -4.0, 0.0]), np.array([2.0, 0.5, 0.0]))
    assert gradient_error(expected, expected) == (0.0, "dq")
    assert gradient_error((np.full(3, 0.4), *expected[1:]), expected) == (0.1, "dq")
    assert gradient_error((expected[0], np.array([1.0, np.nan, 0.0]), expected[2]), expected) == (float("inf"), "dk")


def _installed(name: str) -> bool:
    from latte_ref import backends

    return backends.get_backend(name).unavailable_reason() is None


def test_check_takes_the_gradients_on_jax_too():
    jax = pytest.importorskip("jax")
    from latte_ref import backends

    backend = backends.get_backend("jax")
    with backend.x64(True):
        inputs, references = check.make_grad_inputs(11), {}
        for form in ("bidirectional", "causal"):  # compiled whole: seconds (the recurrence runs in latte-ref check)
            assert check.grad_check(backend, jax.devices()[0], form, inputs, references) <= 1e-12
        assert set(references) == {False, True}
