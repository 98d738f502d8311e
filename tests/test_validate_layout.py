"""The validator's layout hint: a failing candidate whose cases pass with the T and H axes swapped is told so."""

from __future__ import annotations

import json

import numpy as np
import pytest

import latte_ref
from latte_ref import cli
from latte_ref.testing import make_case, validate
from latte_ref.testing.validate import LAYOUT_RETRIES

QUICK = ["t1", "t_prime_37", "one_head", "large_logits"]


def _swap(a):
    return np.swapaxes(a, -3, -2)


def _head_first(q, k, v, mask=None):
    """A correct head-first kernel: q, k (..., H, T, L), v and y (..., H, T, D)."""
    return _swap(latte_ref.bidirectional(_swap(q), _swap(k), _swap(v), mask=mask))


def _head_first_lossy(q, k, v, mask=None):
    """Head-first and wrong in either layout: its output is off by 1e-2."""
    return _head_first(q, k, v, mask=mask) + q.dtype.type(1e-2)


def test_a_time_first_kernel_validated_as_head_first_is_told_to_try_bthd(tmp_path, capsys):
    report = validate(latte_ref.causal, form="causal", layout="BHTD", cases=QUICK, save_dir=tmp_path)
    assert not report.passed and report.layout_hint is not None
    assert report.layout_hint.endswith("try --layout BTHD") and "(..., T, H, L)" in report.layout_hint
    assert f"hint: {report.layout_hint}" in str(report)
    json_path = tmp_path / "report.json"
    argv = ["validate", "latte_ref:causal", "--form", "causal", "--layout", "BHTD", "--save-dir", str(tmp_path)]
    status = cli.main([*argv, "--case", "t1", "--case", "one_latent", "--json", str(json_path)])
    out = capsys.readouterr().out
    assert status == 1 and "hint: t1, one_latent pass with the T and H axes swapped" in out, out
    assert json.loads(json_path.read_text())["layout_hint"].endswith("try --layout BTHD")


def test_a_head_first_kernel_with_the_default_layout_is_told_to_try_bhtd(tmp_path, capsys):
    report = validate(_head_first, form="bidirectional", with_mask=True, save_dir=tmp_path)
    assert not report.passed and report.layout_hint is not None
    assert report.layout_hint.endswith("try --layout BHTD") and "(..., H, T, L)" in report.layout_hint
    assert len(report.layout_hint.split(" pass ")[0].split(", ")) == LAYOUT_RETRIES
    assert validate(_head_first, form="bidirectional", layout="BHTD", with_mask=True, save_dir=tmp_path).passed
    status = cli.main(
        ["validate", "test_validate_layout:_head_first", "--form", "bidirectional", "--save-dir", str(tmp_path)]
    )
    assert status == 1 and "try --layout BHTD" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["BTHD", "BHTD"])
def test_a_kernel_wrong_in_both_layouts_gets_no_layout_hint(layout, tmp_path):
    report = validate(_head_first_lossy, form="bidirectional", layout=layout, cases=QUICK, save_dir=tmp_path)
    assert not report.passed and report.layout_hint is None
    assert "try --layout" not in str(report) and report.to_json()["layout_hint"] is None


def test_a_raising_kernel_gets_no_layout_hint(tmp_path):
    def raises(q, k, v):
        raise RuntimeError("not implemented")

    report = validate(raises, form="causal", cases=QUICK, save_dir=tmp_path)
    assert not report.passed and report.layout_hint is None


def test_the_other_layout_is_tried_only_on_a_failure_and_on_few_cases(tmp_path):
    calls = {"right": 0, "wrong": 0}

    def counted(name, fn):
        def candidate(q, k, v):
            calls[name] += 1
            return fn(q, k, v)

        return candidate

    cases = ["t1", "t_prime_37", "one_head", "one_latent", "large_d", "batch_dims", "nearly_tied"]
    report = validate(counted("right", latte_ref.causal), form="causal", cases=cases, save_dir=tmp_path)
    assert report.passed and report.layout_hint is None and calls["right"] == len(cases)
    report = validate(counted("wrong", latte_ref.causal), form="causal", layout="BHTD", cases=cases, save_dir=tmp_path)
    assert report.layout_hint is not None and calls["wrong"] == len(cases) + LAYOUT_RETRIES
    smallest = sorted(cases, key=lambda name: make_case(name, "causal").q.size)[:LAYOUT_RETRIES]
    assert report.layout_hint.startswith(", ".join(smallest) + " pass")


def test_a_step_candidate_takes_no_layout_and_gets_no_hint(tmp_path):
    def step_off(q_t, k_t, v_t, state):
        y_t, state = latte_ref.step(q_t, k_t, v_t, state)
        return y_t + q_t.dtype.type(1e-2), state

    report = validate(step_off, form="step", cases=["t1", "t_prime_37"], save_dir=tmp_path)
    assert not report.passed and report.layout_hint is None
