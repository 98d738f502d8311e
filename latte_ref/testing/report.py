"""The report of :func:`latte_ref.testing.validate`: one row per case, as a table, JSON, and the worst case saved."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .tolerance import Tolerance

__all__ = [
    "SAVE_DIR_VARIABLE",
    "CaseResult",
    "Report",
    "ValidationError",
    "first_mismatch",
    "reproduce_command",
    "save_worst",
    "shape_label",
]

SAVE_DIR_VARIABLE = "LATTE_REF_SAVE_DIR"
"""The environment variable naming where a failing run's worst case goes when no ``save_dir`` is given."""


class ValidationError(AssertionError):
    """Raised by :func:`assert_matches_reference`; ``report`` holds the full :class:`Report`."""

    def __init__(self, report: Report) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass
class CaseResult:
    """One row of the report.

    ``segments`` holds a packed case's documents' lengths in each row (batch axes flattened);
    ``skipped`` says why a case did not run (then ``passed`` is False but it fails nothing).
    With ``grad``, ``grad_error`` is the gradients' error (max |g - g_ref| over max |g_ref|, the worst of
    dq, dk, dv, named by ``grad_worst``) and ``grad_tolerance`` its bound; ``passed`` needs both within.
    """

    name: str
    shape: str
    max_abs: float
    rel_rms: float
    tolerance: Tolerance
    passed: bool
    note: str = ""
    description: str = ""
    first_mismatch: dict[str, Any] | None = None
    traceback: str = ""
    segments: list[list[int]] | None = None
    skipped: str = ""
    grad_error: float | None = None
    grad_tolerance: float | None = None
    grad_worst: str = ""
    grad_note: str = ""

    def add_gradients(self, error: float, bound: float, worst: str, note: str = "", traceback: str = "") -> None:
        """Record the gradients' comparison: a failing one fails the case."""
        self.grad_error, self.grad_tolerance, self.grad_worst, self.grad_note = error, bound, worst, note
        self.passed = self.passed and not note and error <= bound
        self.traceback = self.traceback or traceback

    @property
    def status(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"SKIP"``."""
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"

    @property
    def ratio(self) -> float:
        """The worse metric over its bound (``inf`` when the case failed for another reason: a crash, a dtype)."""
        if (self.note or self.grad_note) and not self.passed:
            return float("inf")
        ratio = self.tolerance.ratio(self.rel_rms, self.max_abs)
        if self.grad_error is not None and self.grad_tolerance:
            ratio = max(ratio, self.grad_error / self.grad_tolerance)
        return ratio


@dataclass
class Report:
    """The outcome of :func:`validate`: one :class:`CaseResult` per case and the worst case's reproduction.

    ``layout_hint`` says ``try --layout X`` when the failing cases pass in the other layout.
    """

    settings: dict[str, Any]
    results: list[CaseResult] = field(default_factory=list)
    worst_npz: str | None = None
    reproduce: str | None = None
    layout_hint: str | None = None

    @property
    def passed(self) -> bool:
        """Whether no case failed (skipped cases fail nothing)."""
        return all(r.status != "FAIL" for r in self.results)

    @property
    def run(self) -> list[CaseResult]:
        """The rows of the cases that ran."""
        return [r for r in self.results if not r.skipped]

    @property
    def worst(self) -> CaseResult | None:
        """The case furthest past (or closest to) its tolerance, among those that ran."""
        return max(self.run, key=lambda r: r.ratio, default=None)

    def table(self) -> str:
        """One row per case (what it probes at the end); under a failing one, why and where it first goes wrong."""
        grad = bool(self.settings.get("grad"))
        columns = f" {'grad err':>9} {'grad tol':>8}" if grad else ""
        header = f"{'case':<20} {'shape':<24} {'max abs':>9} {'rel rms':>9}  {'tolerance':<26}{columns}"
        header += f" {'result':<6}  probes"
        lines = [header, "-" * len(header)]
        for r in self.results:
            if r.skipped:
                blank = f" {'-':>9} {'-':>8}" if grad else ""
                lines.append(
                    f"{r.name:<20} {r.shape:<24} {'-':>9} {'-':>9}  {'':<26}{blank} {r.status:<6}  {r.description}"
                )
                lines.append(f"    skipped: {r.skipped}")
                continue
            gradient = ""
            if grad:
                error = "-" if r.grad_error is None else f"{r.grad_error:.2e}"
                bound = "-" if r.grad_tolerance is None else f"{r.grad_tolerance:.1e}"
                gradient = f" {error:>9} {bound:>8}"
            lines.append(
                f"{r.name:<20} {r.shape:<24} {r.max_abs:>9.2e} {r.rel_rms:>9.2e}  {r.tolerance!s:<26}{gradient}"
                f" {r.status:<6}  {r.description}"
            )
            if r.note:
                lines.append(f"    {r.note}")
            if r.grad_note:
                lines.append(f"    {r.grad_note}")
            elif r.grad_error is not None and r.grad_tolerance is not None and not r.grad_error <= r.grad_tolerance:
                lines.append(f"    gradient: {format_gradient_failure(r.grad_worst, r.grad_error, r.grad_tolerance)}")
            if r.segments is not None and not r.passed:
                lines.append(f"    documents per row: {format_segments(r.segments)}")
            if r.first_mismatch is not None:
                lines.append(f"    first mismatch: {format_mismatch(r.first_mismatch)}")
        return "\n".join(lines)

    def header(self) -> str:
        """The settings in one or two lines: what ran, and against which reference."""
        s = self.settings
        title = f"latte-ref validate: {s['candidate']} as form={s['form']} on {s['backend']}/{s['device']}/{s['dtype']}"
        scale = s.get("logit_scale")
        reference = "reference: Latte(q, k, v)" if scale is None else f"reference: Latte(s*q, s*k, v), s = {scale}"
        axes = s.get("batch_axes")
        fed = "as each case has them (0, 1 or 2)" if axes is None else f"exactly {axes}"
        gradients = ""
        if s.get("grad"):
            gradients = (
                f"\ngradients: of sum(y * w) by q, k, v (w fixed), against the reference's, float64 {s['backend']}"
            )
        return f"{title}\n{reference}; batch axes: {fed}{gradients}"

    def tracebacks(self) -> str:
        """The full traceback of every case whose candidate raised (``--traceback``)."""
        return "\n".join(f"--- {r.name} ---\n{r.traceback.rstrip()}" for r in self.results if r.traceback)

    def summary(self) -> str:
        """``N passed, M failed``, and the skipped cases with the flag they wait for."""
        counts = {status: sum(r.status == status for r in self.results) for status in ("PASS", "FAIL", "SKIP")}
        text = f"{counts['PASS']} passed, {counts['FAIL']} failed"
        if counts["SKIP"]:
            text += f", {counts['SKIP']} skipped (packed cases: see their rows)"
        return text

    def __str__(self) -> str:
        lines = [self.header(), self.table(), self.summary()]
        if self.layout_hint:
            lines.append(f"hint: {self.layout_hint}")
        worst = self.worst
        if worst is not None and not self.passed:
            lines.append(f"worst case: {worst.name} ({worst.ratio:.3g} x its tolerance)")
            if self.worst_npz:
                lines.append(f"its inputs: {self.worst_npz}")
            if self.reproduce:
                lines.append(f"reproduce: {self.reproduce}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The settings, the verdict and one row per case, as JSON data (a skipped row measures nothing: null)."""
        rows = []
        for r in self.results:
            row = asdict(r)
            row["status"] = r.status
            row["tolerance"] = {
                "rel_rms": r.tolerance.rel_rms,
                "max_abs": r.tolerance.max_abs,
                "rule": r.tolerance.rule,
            }
            if r.skipped:
                row["max_abs"] = row["rel_rms"] = row["tolerance"]["rel_rms"] = row["tolerance"]["max_abs"] = None
            elif row["grad_error"] is not None and not np.isfinite(row["grad_error"]):
                row["grad_error"] = None  # a backward that raised measured nothing: grad_note says why
            rows.append(row)
        worst = self.worst
        return {
            "settings": self.settings,
            "passed": self.passed,
            "results": rows,
            "worst": None if worst is None else worst.name,
            "worst_npz": self.worst_npz,
            "reproduce": self.reproduce,
            "layout_hint": self.layout_hint,
        }


def save_worst(worst: CaseResult, arrays: dict[str, np.ndarray], settings: dict[str, Any], save_dir: Any) -> str:
    """Write the worst case's arrays and the settings to an ``.npz`` in ``save_dir``.

    Without ``save_dir``: the folder ``LATTE_REF_SAVE_DIR`` names, else the system's temporary directory.
    """
    if save_dir is None:
        save_dir = os.environ.get(SAVE_DIR_VARIABLE) or tempfile.gettempdir()
    directory = os.fspath(save_dir)
    os.makedirs(directory, exist_ok=True)
    candidate = re.sub(r"[^A-Za-z0-9_.]+", "_", settings["candidate"]).strip("_")
    name = f"latte-validate-{candidate}-{settings['form']}-{settings['dtype']}-{worst.name}-seed{settings['seed']}.npz"
    path = os.path.join(directory, name)
    contents: dict[str, Any] = {**arrays, "case": np.array(worst.name), "settings": np.array(json.dumps(settings))}
    np.savez(path, **contents)
    return path


def reproduce_command(settings: dict[str, Any], case_name: str) -> str:
    """The ``latte-ref validate`` command line that reruns one case with these settings."""
    parts = [
        "latte-ref validate",
        settings["candidate"],
        "--form",
        settings["form"],
        "--backend",
        settings["backend"],
        "--dtype",
        settings["dtype"],
        "--seed",
        str(settings["seed"]),
        "--case",
        case_name,
    ]
    if settings["device"] not in ("cpu", "None"):
        parts += ["--device", settings["device"]]
    if settings.get("logit_scale") is not None:
        parts += ["--logit-scale", str(settings["logit_scale"])]
    if settings.get("batch_axes") is not None:
        parts += ["--batch-axes", str(settings["batch_axes"])]
    if settings["layout"] != "BTHD":
        parts += ["--layout", settings["layout"]]
    flags = {
        "--with-mask": "with_mask",
        "--with-state": "with_state",
        "--with-segments": "with_segments",
        "--grad": "grad",
    }
    parts += [flag for flag, key in flags.items() if settings.get(key)]
    return " ".join(parts)


def shape_label(q_shape: tuple[int, ...], d: int) -> str:
    """The case's shape by axis, e.g. ``"B=2 T=29 H=2 L=4 D=8"`` (``B=2x3`` for two batch axes, none for none)."""
    *batch, t, h, n_latents = q_shape
    parts = [f"B={'x'.join(str(b) for b in batch)}"] if batch else []
    return " ".join([*parts, f"T={t}", f"H={h}", f"L={n_latents}", f"D={d}"])


def first_mismatch(
    actual: np.ndarray, expected: np.ndarray, bound: float, *, segment_ids: np.ndarray | None = None
) -> dict[str, Any] | None:
    """The earliest token whose error exceeds ``bound`` (or is not finite), in (..., T, H, D) arrays.

    Earliest in t first, then batch, head and value index, so that a causal bug shows where it starts.
    When no single element exceeds the bound (the case failed on the relative RMS), the largest error.
    With ``segment_ids`` (..., T), also the token's document (``"segment"``, its id) and its place
    in it (``"segment_token"``, 0 for a document's first token): a leak shows at a boundary.
    """
    if actual.shape != expected.shape or actual.size == 0:
        return None
    error = np.abs(actual - expected)
    bad = ~(error <= bound)  # NaN counts as bad
    if not bad.any():
        if not np.any(error > 0):
            return None
        index = np.unravel_index(int(np.argmax(error)), error.shape)
        kind = "largest error (no single element exceeds the max-abs bound)"
    else:
        by_t = np.moveaxis(bad, -3, 0)  # [T, ..., H, D]
        first = np.argwhere(by_t)[0]
        index = (*first[1:-2], first[0], *first[-2:])
        kind = "first error over the max-abs bound"
    *batch, t, head, d = (int(i) for i in index)
    found: dict[str, Any] = {
        "batch": batch,
        "t": t,
        "head": head,
        "d": d,
        "expected": float(expected[tuple(index)]),
        "actual": float(actual[tuple(index)]),
        "kind": kind,
    }
    if segment_ids is not None:
        row = segment_ids[tuple(batch)]  # [T]
        found["segment"] = int(row[t])
        found["segment_token"] = t - int(np.argmax(row == row[t]))
    return found


def format_mismatch(m: dict[str, Any]) -> str:
    """A first mismatch in one line: where, the two values, and what kind."""
    index = m["batch"][0] if len(m["batch"]) == 1 else tuple(m["batch"])
    batch = f"batch {index}, " if m["batch"] else ""
    document = f" (document {m['segment']}, its token {m['segment_token']})" if "segment" in m else ""
    return (
        f"{batch}t {m['t']}{document}, head {m['head']}, d {m['d']}: expected {m['expected']:.7g}, "
        f"actual {m['actual']:.7g} ({m['kind']})"
    )


def format_segments(segments: list[list[int]]) -> str:
    """A packed case's documents' lengths, row by row: ``[7, 20, 14] | [3, 5, 9, 2, 22]``."""
    return " | ".join(str(row) for row in segments)


def format_gradient_failure(worst: str, error: float, bound: float) -> str:
    """Why a case's gradients fail, in one line: which of dq, dk, dv is worst, and by how much."""
    if not np.isfinite(error):
        return f"{worst} is not finite (or not of its input's shape): the backward disagrees"
    return f"{worst} is off by {error:.3g} x max |g_ref| (bound {bound:.1e}): the backward disagrees"
