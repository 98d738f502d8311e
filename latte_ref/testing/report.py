"""The report of :func:`latte_ref.testing.validate`: one row per case, as a table, JSON, and the worst case saved."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .tolerance import Tolerance

__all__ = ["CaseResult", "Report", "ValidationError", "reproduce_command", "save_worst"]


class ValidationError(AssertionError):
    """Raised by :func:`assert_matches_reference`; ``report`` holds the full :class:`Report`."""

    def __init__(self, report: Report) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass
class CaseResult:
    """One row of the report."""

    name: str
    shape: str
    max_abs: float
    rel_rms: float
    tolerance: Tolerance
    passed: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        """The worse metric over its bound (``inf`` when the candidate raised or gave a wrong shape)."""
        return self.tolerance.ratio(self.rel_rms, self.max_abs)


@dataclass
class Report:
    """The outcome of :func:`validate`: one :class:`CaseResult` per case and the worst case's reproduction."""

    settings: dict[str, Any]
    results: list[CaseResult] = field(default_factory=list)
    worst_npz: str | None = None
    reproduce: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def worst(self) -> CaseResult | None:
        """The case furthest past (or closest to) its tolerance."""
        return max(self.results, key=lambda r: r.ratio, default=None)

    def table(self) -> str:
        header = f"{'case':<24} {'shape':<16} {'max abs':>9} {'rel rms':>9}  {'tolerance':<26} result"
        lines = [header, "-" * len(header)]
        for r in self.results:
            verdict = "PASS" if r.passed else "FAIL"
            note = f"  ({r.note})" if r.note else ""
            lines.append(
                f"{r.name:<24} {r.shape:<16} {r.max_abs:>9.2e} {r.rel_rms:>9.2e}  {r.tolerance!s:<26} {verdict}{note}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        s = self.settings
        title = f"latte-ref validate: {s['candidate']} as form={s['form']} on {s['backend']}/{s['device']}/{s['dtype']}"
        failed = sum(not r.passed for r in self.results)
        lines = [title, self.table(), f"{len(self.results) - failed} passed, {failed} failed"]
        worst = self.worst
        if worst is not None:
            lines.append(f"worst case: {worst.name} ({worst.ratio:.3g} x its tolerance)")
        if self.worst_npz:
            lines.append(f"its inputs: {self.worst_npz}")
        if self.reproduce:
            lines.append(f"reproduce: {self.reproduce}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        rows = []
        for r in self.results:
            row = asdict(r)
            row["tolerance"] = {
                "rel_rms": r.tolerance.rel_rms,
                "max_abs": r.tolerance.max_abs,
                "rule": r.tolerance.rule,
            }
            rows.append(row)
        worst = self.worst
        return {
            "settings": self.settings,
            "passed": self.passed,
            "results": rows,
            "worst": None if worst is None else worst.name,
            "worst_npz": self.worst_npz,
            "reproduce": self.reproduce,
        }


def save_worst(worst: CaseResult, arrays: dict[str, np.ndarray], settings: dict[str, Any], save_dir: Any) -> str:
    """Write the worst case's arrays and the settings to an ``.npz`` in ``save_dir`` (or the temporary directory)."""
    directory = tempfile.gettempdir() if save_dir is None else os.fspath(save_dir)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"latte-validate-{settings['form']}-{worst.name}-seed{settings['seed']}.npz")
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
    if settings["layout"] != "BTHD":
        parts += ["--layout", settings["layout"]]
    parts += [
        flag for flag, on in (("--with-mask", settings["with_mask"]), ("--with-state", settings["with_state"])) if on
    ]
    return " ".join(parts)
