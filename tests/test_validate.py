"""The conformance suite itself: it rejects planted bugs and passes correct, independent implementations."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_pytest
from planted_bugs import PLANTED

import latte_ref
from latte_ref import cli
from latte_ref.testing import (
    case_names,
    gated_linear_attention,
    generate_cases,
    make_case,
    skipped_cases,
    validate,
)
from latte_ref.testing.tolerance import errors

# The planted bugs are O(T²) or per-token Python loops: the long case is left to the correct implementations.
SHORT = [n for n in case_names("causal", with_mask=True, with_state=True, with_segments=True) if n != "long"]

# For each bug, cases that must be among those that catch it (the mechanism the case was built for).
CAUGHT_BY = {
    "causal_leak": "t_prime_37",
    "softmax_wrong_axis": "t1",
    "no_max_subtraction": "large_logits",
    "normaliser_off_by_one": "t_prime_131",
    "global_max": "increasing_logits",
    "state_not_rescaled": "t_prime_37",
    "float32_inside": "t1",
    "perturbed_1e-3": "t_prime_37",
    "mask_ignored_for_keys": "mask_left",
    "state_dropped": "state_cuts_increasing",
    "segment_boundary_late": "packed_rows",
    "state_not_reset_on_chunk_edge": "packed_across_chunks",
    "running_max_not_reset": "packed_logit_jump",
    "first_token_starts_a_document": "packed_state_cuts",
    "padding_read_in_documents": "packed_padding",
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_rejected(bug, tmp_path):
    candidate, settings = PLANTED[bug]
    packed = settings.get("with_segments", False)
    names = [
        n for n in SHORT if n in case_names(settings["form"], with_mask=True, with_state=True, with_segments=packed)
    ]
    report = validate(candidate, cases=names, save_dir=tmp_path, **settings)
    failed = {r.name for r in report.results if not r.passed}
    assert not report.passed
    assert CAUGHT_BY[bug] in failed, report


def _head_first(q, k, v):
    swap = lambda a: np.swapaxes(a, -3, -2)  # noqa: E731
    return swap(latte_ref.causal(swap(q), swap(k), swap(v)))


@pytest.mark.parametrize(
    ("candidate", "settings"),
    [
        (latte_ref.causal, {"form": "causal", "with_mask": True, "with_state": True, "with_segments": True}),
        (
            latte_ref.causal,
            {"form": "causal", "dtype": "float64", "with_mask": True, "with_state": True, "with_segments": True},
        ),
        (latte_ref.bidirectional, {"form": "bidirectional", "with_mask": True, "with_segments": True}),
        (latte_ref.step, {"form": "step", "with_mask": True}),
        (gated_linear_attention, {"form": "causal", "with_mask": True}),
        (gated_linear_attention, {"form": "causal", "dtype": "float64", "with_mask": True}),
        (_head_first, {"form": "causal", "layout": "BHTD"}),
        (latte_ref.causal, {"form": "causal", "dtype": "float16", "with_segments": True}),
    ],
    ids=["causal-f32", "causal-f64", "bidirectional", "step", "gla-f32", "gla-f64", "bhtd", "causal-f16"],
)
def test_correct_implementations_pass(candidate, settings, tmp_path):
    report = validate(candidate, save_dir=tmp_path, **settings)
    assert report.passed, report
    flags = {key: settings.get(key, False) for key in ("with_mask", "with_state", "with_segments")}
    assert [r.name for r in report.run] == case_names(settings["form"], **flags)
    assert {r.name: r.skipped for r in report.results if r.skipped} == skipped_cases(settings["form"], **flags)


def _native_cases(form, slow):
    names = case_names(form, with_mask=True, with_state=True)
    return names if slow else ["t1", "t_prime_37", "large_logits", "increasing_logits", "mask_left", "mask_all_padded"]


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("form", ["causal", "bidirectional"])
def test_native_torch_passes(form, dtype, tmp_path, request):
    pytest.importorskip("torch")
    from latte_ref.testing.references import native_torch

    names = _native_cases(form, request.config.getoption("--slow"))
    candidate = getattr(native_torch, form)
    report = validate(
        candidate, form=form, backend="torch", dtype=dtype, with_mask=True, cases=names, save_dir=tmp_path
    )
    assert report.passed, report


@pytest.mark.parametrize(
    ("form", "names"),
    [
        ("causal", ["mask_random"]),  # each new T compiles a scan: every case, cuts included, runs with --slow
        ("step", ["increasing_logits", "mask_left"]),
    ],
)
def test_native_jax_passes(form, names, tmp_path):
    _assert_native_jax_passes(form, tmp_path, cases=names)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["causal", "step"])
def test_native_jax_passes_every_case(form, tmp_path):
    _assert_native_jax_passes(form, tmp_path)


def _assert_native_jax_passes(form, tmp_path, cases=None):
    pytest.importorskip("jax")
    from latte_ref.testing.references import native_jax

    report = validate(
        getattr(native_jax, form),
        form=form,
        backend="jax",
        dtype="float32",
        with_mask=True,
        with_state=form == "causal",
        cases=cases,
        save_dir=tmp_path,
    )
    assert report.passed, report


def test_native_torch_catches_a_planted_bug_on_torch(tmp_path):
    pytest.importorskip("torch")
    from latte_ref.testing.references import native_torch

    def leaky(q, k, v):  # the last token's value leaks into every output
        return native_torch.causal(q, k, v) + 1e-3 * v[..., -1:, :, :].to(q.dtype)

    report = validate(leaky, form="causal", backend="torch", cases=["t_prime_37"], save_dir=tmp_path)
    assert not report.passed


def test_cases_are_reproducible_from_seed_and_name():
    a, b, c = (
        make_case("mask_random", "causal", seed=4),
        make_case("mask_random", "causal", seed=4),
        make_case("mask_random", "causal", seed=5),
    )
    assert all(np.array_equal(x, y) for x, y in zip((a.q, a.k, a.v, a.mask), (b.q, b.k, b.v, b.mask), strict=True))
    assert not np.array_equal(a.q, c.q)
    # A case does not depend on which other cases were generated with it.
    alone = generate_cases("causal", names=["large_d"], seed=1)[0]
    assert np.array_equal(alone.v, make_case("large_d", "causal", seed=1).v)


def test_cases_cover_the_edges():
    cases = {c.name: c for c in generate_cases("causal", with_mask=True, with_state=True)}
    shapes = [c.q.shape for c in cases.values()]
    assert any(s[-3] == 1 for s in shapes) and any(s[-2] == 1 for s in shapes) and any(s[-1] == 1 for s in shapes)
    assert any(c.v.shape[-1] >= 256 for c in cases.values()) and any(len(s) == 5 for s in shapes)
    primes = [s[-3] for s in shapes if s[-3] > 32 and all(s[-3] % p for p in range(2, s[-3]))]
    assert primes and all(t % 8 for t in primes)
    k = cases["increasing_logits"].k
    assert np.max(k) - np.min(k) > 745  # exp underflows to 0 even in float64 across the sequence
    assert np.max(cases["large_logits"].k) > 710  # exp overflows even in float64
    mask = cases["mask_all_padded"].mask
    assert not mask.any(axis=-1).all() and mask.all(axis=-1).any()
    assert cases["long"].n_tokens >= 4096 and cases["state_cuts"].cuts


def test_report_saves_the_worst_case_and_the_command_reproduces_it(tmp_path, capsys):
    report = validate("planted_bugs:perturbed", form="causal", cases=["t1", "t_prime_37"], save_dir=tmp_path)
    saved = np.load(report.worst_npz)
    worst = make_case(report.worst.name, "causal")
    np.testing.assert_allclose(saved["v"], worst.v, rtol=1e-6)  # the inputs as the candidate saw them (float32)
    assert errors(saved["actual"], saved["expected"]) == (report.worst.max_abs, report.worst.rel_rms)
    assert report.reproduce.startswith("latte-ref validate planted_bugs:perturbed --form causal")
    json_path = tmp_path / "report.json"
    status = cli.main([*report.reproduce.split()[1:], "--save-dir", str(tmp_path), "--json", str(json_path)])
    assert status == 1
    assert "FAIL" in capsys.readouterr().out
    rows = json.loads(json_path.read_text())["results"]
    assert [r["name"] for r in rows] == [report.worst.name] and rows[0]["rel_rms"] == report.worst.rel_rms
    assert (
        cli.main(["validate", "latte_ref:causal", "--form", "causal", "--case", "t1", "--save-dir", str(tmp_path)]) == 0
    )


def test_a_crash_wrong_dtype_or_shape_is_a_failed_case_not_an_error(tmp_path):
    def crashes(q, k, v):
        raise RuntimeError("kernel launch failed")

    def wrong_dtype(q, k, v):
        return latte_ref.causal(q, k, v).astype(np.float32)

    def wrong_shape(q, k, v):
        return latte_ref.causal(q, k, v)[..., :1]

    for candidate, note in ((crashes, "kernel launch failed"), (wrong_dtype, "dtype"), (wrong_shape, "shape")):
        report = validate(candidate, form="causal", dtype="float64", cases=["t1", "t_prime_37"], save_dir=tmp_path)
        assert not any(r.passed for r in report.results)
        assert note in report.results[0].note


def test_low_precision_is_judged_against_the_reference_at_that_precision(tmp_path):
    def coarse(q, k, v):  # ~1% error: more than 8x latte-ref's own float16 error
        return (latte_ref.causal(q, k, v) * (1 + 1e-2)).astype(q.dtype)

    report = validate(coarse, form="causal", dtype="float16", cases=["t_prime_37", "nearly_tied"], save_dir=tmp_path)
    assert not report.passed
    assert all("latte-ref in float16" in r.tolerance.rule for r in report.results)


def test_pytest_plugin_runs_the_suite_as_tests(tmp_path):
    good = run_pytest(tmp_path, "--latte-impl", "latte_ref:causal", "--latte-with-mask", "-k", "t1 or mask_left")
    assert good.returncode == 0 and "2 passed" in good.stdout, good.stdout
    bad = run_pytest(tmp_path, "--latte-impl", "planted_bugs:causal_leak", "-k", "t_prime_37", "--basetemp", "scratch")
    assert bad.returncode == 1 and "1 failed" in bad.stdout and "reproduce: latte-ref validate" in bad.stdout
    # The failing case's inputs go to pytest's temporary tree, not the system's temporary folder.
    assert [p.name for p in (tmp_path / "scratch" / "latte-conformance").glob("*.npz")], bad.stdout
    assert f"its inputs: {tmp_path / 'scratch' / 'latte-conformance'}" in bad.stdout


def test_pytest_plugin_saves_where_latte_save_dir_says(tmp_path):
    bad = run_pytest(
        tmp_path, "--latte-impl", "planted_bugs:causal_leak", "-k", "t_prime_37", "--latte-save-dir", "out"
    )
    assert bad.returncode == 1 and len(list((tmp_path / "out").glob("*.npz"))) == 1, bad.stdout


def test_pytest_plugin_is_inert_without_latte_impl(tmp_path):
    plain = run_pytest(tmp_path)
    assert plain.returncode == 5 and "no tests ran" in plain.stdout  # nothing collected, nothing added
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pytest, latte_ref_pytest; print(sorted({'numpy', 'latte_ref'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "[]"
