"""The packed cases of the validator: what they hold, when they run or are skipped, and the bugs they catch."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from helpers import run_pytest
from planted_bugs import PLANTED

import latte_ref
from latte_ref import cli
from latte_ref.testing import case_names, make_case, packed_names, skipped_cases, validate
from latte_ref.testing.cases import PACKED_CUTS, segment_lengths

PACKED = packed_names("causal")


def _starts(ids: np.ndarray) -> set[int]:
    """Where a document begins in a row of ids (T,), the first token left out."""
    return {int(t) for t in np.flatnonzero(np.diff(ids)) + 1}


def _crossed(ids: np.ndarray, edges: set[int]) -> set[int]:
    """The edges that some document of a row (T,) spans: it has tokens on both sides."""
    bounds = [0, *sorted(_starts(ids)), ids.size]
    return {edge for start, stop in itertools.pairwise(bounds) for edge in edges if start < edge < stop}


def test_the_packed_cases_hold_what_they_claim():
    cases = {name: make_case(name, "causal") for name in PACKED}
    assert PACKED == [
        "packed_rows",
        "packed_length_one",
        "packed_across_chunks",
        "packed_logit_jump",
        "packed_padding",
        "packed_state_cuts",
    ]
    for case in cases.values():
        ids = case.segment_ids
        assert ids.shape == case.q.shape[:-2] and ids.dtype == np.int32 and np.all(np.diff(ids, axis=-1) >= 0)
        assert len({tuple(row) for row in case.segments}) == len(case.segments)  # a different packing per row
    rows = cases["packed_rows"].segments
    assert (
        all(len(row) >= 3 for row in rows) and cases["packed_rows"].segment_ids[1, 0] != 0
    )  # ids need not be 0, 1, ..
    assert [1] * 23 in cases["packed_length_one"].segments and cases["packed_length_one"].segments[0][0] == 1
    edges = {16, 32, 64, 128}
    crossed = [_crossed(ids, edges) for ids in cases["packed_across_chunks"].segment_ids]
    assert crossed[0] == crossed[2] == edges  # a document goes on across each chunk edge
    assert {64, 128} <= _starts(cases["packed_across_chunks"].segment_ids[1])  # documents start on them
    jump = cases["packed_logit_jump"]
    first = jump.segment_ids == jump.segment_ids[:, :1]
    assert np.min(jump.k[first]) - np.max(jump.k[~first]) > 745  # exp(k - carried max) underflows even in float64
    padded = cases["packed_padding"]
    for ids, mask in zip(padded.segment_ids, padded.mask, strict=True):
        documents = np.split(mask, sorted(_starts(ids)))
        assert any(not d[0] and d.any() for d in documents) or any(not d[-1] and d.any() for d in documents)
    assert any(not d.any() for d in np.split(padded.mask[1], sorted(_starts(padded.segment_ids[1]))))
    cut = cases["packed_state_cuts"]
    starts = set().union(*(_starts(ids) for ids in cut.segment_ids))
    assert cut.cuts == PACKED_CUTS and not starts & set(PACKED_CUTS)  # a call's first token continues its state
    assert {t - 1 for t in PACKED_CUTS} & starts  # some call begins at a document's second token


def test_segment_lengths_reads_the_runs_back():
    assert segment_lengths(np.array([5, 5, 7, 9, 9, 9])) == [2, 1, 3]
    assert segment_lengths(np.array([], dtype=np.int32)) == []


def test_which_packed_cases_run_for_which_flags():
    assert packed_names("step") == [] and "packed_state_cuts" not in packed_names("bidirectional")
    assert not set(PACKED) & set(case_names("causal", with_mask=True, with_state=True))
    assert set(PACKED) <= set(case_names("causal", with_mask=True, with_state=True, with_segments=True))
    assert skipped_cases("causal", with_mask=True, with_state=True, with_segments=True) == {}
    assert skipped_cases("causal", with_segments=True) == {
        "packed_padding": "needs mask= (--with-mask)",
        "packed_state_cuts": "needs state= (--with-state)",
    }
    assert skipped_cases("causal", with_mask=True)["packed_padding"] == "needs segment_ids= (--with-segments)"
    assert skipped_cases("step") == {}


def test_without_segments_the_packed_cases_are_reported_as_skipped_with_why(tmp_path):
    report = validate(latte_ref.causal, form="causal", with_mask=True, save_dir=tmp_path)
    skipped = {r.name: r.skipped for r in report.results if r.status == "SKIP"}
    assert report.passed and skipped == skipped_cases("causal", with_mask=True) and set(skipped) == set(PACKED)
    assert skipped["packed_state_cuts"] == "needs segment_ids= and state= (--with-segments --with-state)"
    text = str(report)
    assert "packed_rows" in text and "skipped: needs segment_ids= (--with-segments)" in text
    assert text.splitlines()[-1] == f"{len(report.run)} passed, 0 failed, 6 skipped (packed cases: see their rows)"
    rows = {row["name"]: row for row in report.to_json()["results"]}
    assert rows["packed_rows"]["status"] == "SKIP" and rows["packed_rows"]["skipped"].startswith("needs segment_ids=")
    assert rows["packed_rows"]["segments"] == [[7, 20, 14], [3, 5, 9, 2, 22]] and rows["t1"]["status"] == "PASS"
    assert rows["packed_rows"]["max_abs"] is None and rows["packed_rows"]["tolerance"]["rule"] == "not run"
    json.dumps(report.to_json(), allow_nan=False)  # strict JSON: no NaN for what was not measured
    assert os.listdir(tmp_path) == []  # a skipped case is no failure: nothing saved


def test_naming_a_packed_case_runs_it_whatever_the_flags(tmp_path):
    report = validate(latte_ref.causal, form="causal", cases=["packed_rows"], save_dir=tmp_path)
    assert report.passed and [r.status for r in report.results] == ["PASS"]


@pytest.mark.parametrize(
    "settings",
    [
        {"form": "causal", "batch_axes": 0},
        {"form": "causal", "batch_axes": 2, "with_mask": True},
        {"form": "causal", "layout": "BHTD", "with_state": True},
        {"form": "bidirectional", "dtype": "float64", "with_mask": True},
        {"form": "bidirectional", "dtype": "float16"},
    ],
    ids=["causal-one-row-per-call", "causal-two-batch-axes", "causal-bhtd-state", "bidirectional-f64", "bidi-f16"],
)
def test_the_packed_cases_pass_latte_ref_however_they_are_fed(settings, tmp_path):
    candidate = latte_ref.causal if settings["form"] == "causal" else latte_ref.bidirectional
    if settings.get("layout") == "BHTD":
        candidate = _head_first
    names = [n for n in packed_names(settings["form"]) if n not in skipped_cases(settings["form"], **_flags(settings))]
    report = validate(candidate, with_segments=True, cases=names, save_dir=tmp_path, **settings)
    assert report.passed and len(report.results) >= 4, report


def _flags(settings):
    return {"with_mask": settings.get("with_mask", False), "with_state": settings.get("with_state", False)} | {
        "with_segments": True
    }


def _head_first(q, k, v, *, segment_ids=None, state=None, return_state=False):
    swap = lambda a: np.swapaxes(a, -3, -2)  # noqa: E731
    out = latte_ref.causal(swap(q), swap(k), swap(v), segment_ids=segment_ids, state=state, return_state=return_state)
    return (swap(out[0]), out[1]) if return_state else swap(out)


def test_the_packed_cases_pass_latte_ref_on_torch(tmp_path):
    pytest.importorskip("torch")
    report = validate(latte_ref.causal, form="causal", backend="torch", with_segments=True, with_state=True)
    assert report.passed and "packed_state_cuts" in {r.name for r in report.run}, report


# The planted segment bugs -> the packed cases that fail; every other case passes, packed or not.
CAUGHT_BY = {
    "segment_boundary_late": PACKED[:4],  # a leak across a boundary: a document's first token reads the one before
    "state_not_reset_on_chunk_edge": ["packed_across_chunks"],  # a state not reset where a chunk begins a document
    "running_max_not_reset": ["packed_logit_jump"],  # a state reset but for its running max
    "first_token_starts_a_document": ["packed_state_cuts"],  # the state given to a call dropped
    "padding_read_in_documents": ["packed_padding"],
}


@pytest.mark.parametrize("bug", sorted(CAUGHT_BY))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_planted_segment_bug_fails_exactly_the_packed_cases_built_for_it(bug, dtype, tmp_path):
    candidate, settings = PLANTED[bug]
    names = [n for n in case_names(**settings) if n != "long"]
    report = validate(candidate, dtype=dtype, cases=names, save_dir=tmp_path, **settings)
    failed = {r.name for r in report.results if r.status == "FAIL"}
    assert failed == set(CAUGHT_BY[bug]), report  # the unpacked cases pass: the bug is in the segments alone
    assert all(r.ratio > 1e3 for r in report.results if r.name in failed), report  # far outside, not at the edge
    assert report.reproduce.endswith("--with-segments") and report.worst.name in failed
    first = report.worst.first_mismatch
    case = make_case(report.worst.name, "causal")
    assert first["segment"] == case.segment_ids[first["batch"][0], first["t"]]


@pytest.mark.parametrize(
    ("bug", "name", "where"),
    [
        ("segment_boundary_late", "packed_rows", ([1], 3)),  # the second row's second document
        ("state_not_reset_on_chunk_edge", "packed_across_chunks", ([1], 64)),  # the document that starts on 64
    ],
)
def test_the_first_mismatch_of_a_boundary_bug_is_a_documents_first_token(bug, name, where, tmp_path):
    report = validate(PLANTED[bug][0], form="causal", with_segments=True, cases=[name], save_dir=tmp_path)
    m = report.results[0].first_mismatch
    case = make_case(name, "causal")
    assert (m["batch"], m["t"]) == where and m["segment_token"] == 0 and m["t"] in _starts(case.segment_ids[1])
    assert m["segment"] == case.segment_ids[1, m["t"]]
    assert f"batch 1, t {m['t']} (document {m['segment']}, its token 0)" in str(report)
    assert f"documents per row: {' | '.join(str(row) for row in case.segments)}" in str(report)
    saved = np.load(report.worst_npz)
    assert np.array_equal(saved["segment_ids"], case.segment_ids)


def test_the_command_line_runs_packed_cases_with_with_segments(tmp_path, capsys):
    json_path = tmp_path / "report.json"
    common = ["--case", "packed_rows", "--case", "packed_length_one", "--save-dir", str(tmp_path)]
    bug = ["validate", "planted_bugs:segment_boundary_late", "--form", "causal", "--with-segments", *common]
    assert cli.main([*bug, "--json", str(json_path)]) == 1
    out = capsys.readouterr().out
    assert "packed_rows" in out and "FAIL" in out and "--case packed_rows --with-segments" in out
    rows = json.loads(json_path.read_text())["results"]
    assert [r["status"] for r in rows] == ["FAIL", "FAIL"] and rows[0]["first_mismatch"]["segment_token"] == 0
    assert rows[1]["segments"][1] == [1] * 23
    assert cli.main(["validate", "latte_ref:causal", "--form", "causal", "--with-segments", *common]) == 0
    plain = ["validate", "latte_ref:bidirectional", "--form", "bidirectional", "--case", "t1"]
    assert cli.main([*plain, "--json", str(json_path)]) == 0
    assert json.loads(json_path.read_text())["settings"]["with_segments"] is False


def test_a_step_takes_no_segments_a_usage_error(capsys):
    assert cli.main(["validate", "latte_ref:step", "--form", "step", "--with-segments"]) == 2
    assert "takes no segment_ids" in capsys.readouterr().err


def test_the_pytest_plugin_skips_the_packed_cases_without_the_option_and_runs_them_with_it(tmp_path):
    chosen = ["-k", "t1 or packed_rows or packed_padding"]
    plain = run_pytest(tmp_path, "--latte-impl", "latte_ref:causal", *chosen)
    assert plain.returncode == 0 and "1 passed, 2 skipped" in plain.stdout, plain.stdout
    assert "packed_rows needs segment_ids= (--latte-with-segments)" in plain.stdout
    packed = run_pytest(
        tmp_path, "--latte-impl", "latte_ref:causal", "--latte-with-segments", "--latte-with-mask", *chosen
    )
    assert packed.returncode == 0 and "3 passed" in packed.stdout, packed.stdout
    impl = ["--latte-impl", "planted_bugs:state_not_reset_on_chunk_edge", "--latte-with-segments"]
    bug = run_pytest(tmp_path, *impl, "-k", "packed_rows or packed_across_chunks")
    assert bug.returncode == 1 and "1 failed, 1 passed" in bug.stdout and "--with-segments" in bug.stdout, bug.stdout
    step = run_pytest(tmp_path, "--latte-impl", "latte_ref:step", "--latte-form", "step", "--latte-with-segments")
    assert step.returncode == pytest.ExitCode.USAGE_ERROR and "takes no segment_ids" in step.stderr
