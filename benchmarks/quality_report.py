"""Markdown tables of ``benchmarks/quality.py``'s records: means over seeds, paired differences, the lr grid.

    python benchmarks/quality_report.py results/quality/results.json

prints the tables of docs/comparison.md (the page quotes them as this prints them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_report", "paired_difference", "t_quantile_975"]

MODELS = ("softmax", "latte", "linear", "taylor", "window", "hybrid", "retnet", "abc")
# Student's t, 97.5 % quantile, for 1..10 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (1.96 beyond 10: within 12 %)."""
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float | None, int]:
    """Mean of ``a[seed] - b[seed]`` over the seeds both have, the half-width of its 95 % t interval, n.

    Unrounded values in; the half-width is None for a single seed.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("a and b must share at least one seed")
    diffs = np.array([a[s] - b[s] for s in seeds])
    if len(diffs) == 1:
        return float(diffs[0]), None, 1
    half = t_quantile_975(len(diffs) - 1) * float(np.std(diffs, ddof=1)) / np.sqrt(len(diffs))
    return float(diffs.mean()), half, len(diffs)


def _name(r: dict[str, Any]) -> str:
    return r["model"] + ("+conv" if r.get("conv") else "")


def _cell(values: list[float], digits: int, scale: float = 1.0) -> str:
    if not values:
        return "–"
    array = np.asarray(values) * scale
    if len(array) == 1:
        return f"{float(array[0]):.{digits}f} (n=1)"
    return f"{float(np.mean(array)):.{digits}f} ± {float(np.std(array, ddof=1)):.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _main(records: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [r for r in records if r["phase"] == "main" and r["task"] == task]


def _names(records: list[dict[str, Any]]) -> list[str]:
    present = {_name(r) for r in records}
    return [n for m in MODELS for n in (m, m + "+conv") if n in present]


def _setting(r: dict[str, Any]) -> tuple:
    return tuple(r.get(k) for k in ("n_pairs", "n_tokens", "T"))


def _describe(setting: tuple) -> str:
    n_pairs, n_tokens, length = setting
    count = f"{n_pairs} pairs, " if n_pairs else f"{n_tokens} tokens, " if n_tokens else ""
    return f"{count}T = {length}"


def lr_table(records: list[dict[str, Any]]) -> str:
    """Every lr of the grid for every task and model: validation metric and loss, and the choice."""
    search = [r for r in records if r["phase"] == "lr_search"]
    rows = []
    for task in dict.fromkeys(r["task"] for r in search):
        mine = [r for r in search if r["task"] == task]
        for name in _names(mine):
            tried = sorted((r for r in mine if _name(r) == name), key=lambda r: r["lr"])
            chosen = next((r["lr"] for r in _main(records, task) if _name(r) == name), None)
            cells = ", ".join(f"{r['lr']:g}: {r['validation']:.3f} ({r['validation_loss']:.3f})" for r in tried)
            rows.append([task, _describe(_setting(tried[0])), name, cells, "–" if chosen is None else f"{chosen:g}"])
    header = ["task", "setting", "model", "lr: validation metric (validation loss), seed 0", "chosen lr"]
    return _table(header, rows)


def task_table(records: list[dict[str, Any]], task: str, digits: int = 3) -> str:
    """Mean ± std over seeds of every model at every setting of ``task``, and the per-seed values."""
    main = _main(records, task)
    settings = sorted({_setting(r) for r in main}, key=lambda s: tuple(x or 0 for x in s[::-1]))
    rows = []
    for name in _names(main):
        cells = [_cell([r["value"] for r in main if _name(r) == name and _setting(r) == s], digits) for s in settings]
        rows.append([name, *cells])
    return _table(["model", *(_describe(s) for s in settings)], rows)


def paired_table(records: list[dict[str, Any]], task: str, reference: str = "latte") -> str:
    """Latte minus each other model, per setting: mean of the per-seed differences and its 95 % interval."""
    main = _main(records, task)
    settings = sorted({_setting(r) for r in main}, key=lambda s: tuple(x or 0 for x in s[::-1]))
    rows = []
    for conv in sorted({bool(r.get("conv")) for r in main}):
        ref = reference + ("+conv" if conv else "")
        for name in _names([r for r in main if bool(r.get("conv")) == conv]):
            if name == ref:
                continue
            cells = []
            for s in settings:
                a = {r["seed"]: r["value"] for r in main if _name(r) == ref and _setting(r) == s}
                b = {r["seed"]: r["value"] for r in main if _name(r) == name and _setting(r) == s}
                if not set(a) & set(b):
                    cells.append("–")
                    continue
                mean, half, _ = paired_difference(a, b)
                cells.append(f"{mean:+.3f} (n=1)" if half is None else f"{mean:+.3f} ± {half:.3f}")
            rows.append([f"{ref} − {name}", *cells])
    return _table(["difference", *(_describe(s) for s in settings)], rows)


def state_table(records: list[dict[str, Any]]) -> str:
    """The state-size sweep: accuracy against the numbers a decoder carries per layer, per model and size."""
    sweep = [r for r in records if r["phase"] == "state_sweep"]
    if not sweep:
        return ""
    setting = _setting(sweep[0])
    conv = bool(sweep[0].get("conv"))
    points = sweep + [r for r in _main(records, "mqar") if _setting(r) == setting and bool(r.get("conv")) == conv]
    rows = []
    for name in _names(points):
        mine = [r for r in points if _name(r) == name]
        for size in sorted({r["size"] or 0 for r in mine}):
            at = [r for r in mine if (r["size"] or 0) == size]
            values = [r["value"] for r in at]
            per_seed = ", ".join(f"{v:.3f}" for v in values)
            rows.append([name, str(size or "–"), f"{at[0]['state_per_layer']:,}", _cell(values, 3), per_seed])
    header = ["model", "size", "state per layer", f"accuracy, {_describe(setting)}", "per seed"]
    return _table(header, rows)


def timing_table(records: list[dict[str, Any]]) -> str:
    rows_in = _main(records, "timing")
    if not rows_in:
        return ""
    lengths = sorted({r["T"] for r in rows_in})
    rows = [
        [name, *(_cell([r["value"] for r in rows_in if _name(r) == name and r["T"] == t], 0, 1e3) for t in lengths)]
        for name in _names(rows_in)
    ]
    tokens = rows_in[0]["batch"] * rows_in[0]["T"]
    return (
        f"Milliseconds per training step, {tokens} tokens per step at every T: the fastest of"
        f" {rows_in[0]['steps']} steps, mean ± std over {len({r['seed'] for r in rows_in})} fresh models:\n\n"
        + _table(["model", *(f"T = {t}" for t in lengths)], rows)
    )


def machine(records: list[dict[str, Any]]) -> str:
    loads = [x for r in records for x in r["loadavg_1min"]]
    threads = sorted({r["threads"] for r in records})
    seconds = sum(r["seconds"] for r in records if not r.get("reused_from_lr_search") and r["task"] != "timing")
    corpus = next((r for r in records if "corpus_sha256" in r), None)
    text = (
        f"{len(records)} records; torch threads per process {threads}; one-minute load average during the runs"
        f" {min(loads):.1f} to {max(loads):.1f} (median {float(np.median(loads)):.1f});"
        f" {seconds / 60:.0f} minutes of training summed over the runs"
    )
    if corpus:
        text += (
            f"; char corpus: {corpus['corpus_bytes']:,} bytes from {corpus['corpus_files']} files,"
            f" SHA-256 {corpus['corpus_sha256']}"
        )
    return text


def format_report(records: list[dict[str, Any]]) -> str:
    """Every table, with a heading each."""
    parts = ["## Machine\n\n" + machine(records), "## Learning rates\n\n" + lr_table(records)]
    titles = {
        "char": "Byte-level language modelling (held-out nats per byte)",
        "recall": "Associative recall, one token per pair",
        "mqar": "MQAR (Zoology's format)",
        "copy": "Selective copying",
        "needle": "Needle",
    }
    for task, title in titles.items():
        if _main(records, task):
            parts.append(f"## {title}\n\n" + task_table(records, task))
            parts.append("### Latte minus each model, paired by seed (95 % interval)\n\n" + paired_table(records, task))
    if state_table(records):
        parts.append("## State size\n\n" + state_table(records))
    if timing_table(records):
        parts.append("## Time per step\n\n" + timing_table(records))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(format_report(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
