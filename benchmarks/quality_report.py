"""Markdown tables of ``benchmarks/quality.py``'s records: mean ± standard deviation over seeds.

    python benchmarks/quality_report.py results/quality/results.json

prints the tables of docs/comparison.md (the page quotes them as this prints them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_report"]

MODELS = ("softmax", "latte", "linear")


def _cell(values: list[float], digits: int, scale: float = 1.0) -> str:
    if not values:
        return "–"
    array = np.asarray(values) * scale
    std = float(np.std(array, ddof=1)) if len(array) > 1 else 0.0
    return f"{float(np.mean(array)):.{digits}f} ± {std:.{digits}f}"


def _values(records: list[dict[str, Any]], **match: Any) -> list[float]:
    return [r["value"] for r in records if all(r.get(k) == v for k, v in match.items())]


def _main(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["phase"] == "main"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def models_table(records: list[dict[str, Any]]) -> str:
    """Parameters per task and model, the chosen lr, and the lr search's validation values."""
    search = [r for r in records if r["phase"] == "lr_search" and r["metric"] != "seconds_per_step"]
    rows = []
    for task in ("char", "recall", "needle"):
        for model in MODELS:
            mine = [r for r in _main(records) if r["task"] == task and r["model"] == model]
            tried = sorted((r["lr"], r["validation"]) for r in search if r["task"] == task and r["model"] == model)
            if not mine:
                continue
            setting = ", ".join(f"{k}={tried_setting}" for k, tried_setting in _setting(search, task).items())
            rows.append(
                [
                    task,
                    model,
                    f"{mine[0]['n_params']:,}",
                    ", ".join(f"{lr:g}: {value:.3f}" for lr, value in tried) + (f" ({setting})" if setting else ""),
                    f"{mine[0]['lr']:g}",
                ]
            )
    return _table(["task", "model", "parameters", "validation at each lr (lr search, seed 0)", "chosen lr"], rows)


def _setting(search: list[dict[str, Any]], task: str) -> dict[str, Any]:
    first = next((r for r in search if r["task"] == task), None)
    if first is None or task == "char":
        return {}
    return {"n_pairs": first["n_pairs"]} if task == "recall" else {"T": first["T"]}


def char_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for model in MODELS:
        mine = [r for r in _main(records) if r["task"] == "char" and r["model"] == model]
        if mine:
            values = [r["value"] for r in mine]
            seeds = ", ".join(f"{v:.3f}" for v in values)
            seconds = _cell([r["seconds"] for r in mine], 0)
            rows.append([model, _cell(values, 3), seeds, seconds])
    return _table(["model", "held-out nats per character", "per seed", "seconds per run"], rows)


def recall_table(records: list[dict[str, Any]]) -> str:
    main = [r for r in _main(records) if r["task"] == "recall"]
    pairs = sorted({r["n_pairs"] for r in main})
    rows = [
        [model, *(_cell(_values(main, model=model, n_pairs=n), 3) for n in pairs)]
        for model in MODELS
        if any(r["model"] == model for r in main)
    ]
    return _table(["model", *(f"{n} pairs (T = {2 * n})" for n in pairs)], rows)


def latent_table(records: list[dict[str, Any]]) -> str:
    sweep = [r for r in records if r["phase"] == "latent_sweep"]
    if not sweep:
        return ""
    n_pairs = sweep[0]["n_pairs"]
    latte = [r for r in records if r["phase"] != "lr_search" and r["task"] == "recall" and r["model"] == "latte"]
    latte = [r for r in latte if r["n_pairs"] == n_pairs]
    heads = sweep[0]["n_heads"]
    rows = []
    for n_latents in sorted({r["n_latents"] for r in latte}):
        mine = [r for r in latte if r["n_latents"] == n_latents]
        values = [r["value"] for r in mine]
        rows.append(
            [
                str(n_latents),
                str(n_latents // heads),
                f"{mine[0]['n_params']:,}",
                _cell(values, 3),
                ", ".join(f"{v:.3f}" for v in values),
            ]
        )
    return _table(["L (all heads)", "L per head", "parameters", f"accuracy, {n_pairs} pairs", "per seed"], rows)


def needle_tables(records: list[dict[str, Any]]) -> str:
    main = [r for r in _main(records) if r["task"] == "needle"]
    lengths = sorted({r["T"] for r in main})
    present = [m for m in MODELS if any(r["model"] == m for r in main)]
    accuracy = [
        [model, *(_cell(_values(main, model=model, T=t, metric="accuracy"), 3) for t in lengths)] for model in present
    ]
    timing = [
        [model, *(_cell(_values(main, model=model, T=t, metric="seconds_per_step"), 0, 1e3) for t in lengths)]
        for model in present
    ]
    header = ["model", *(f"T = {t}" for t in lengths)]
    return (
        "Accuracy in the last quarter of the sequence:\n\n"
        + _table(header, accuracy)
        + "\n\nMilliseconds per training step (median of the run's steps; the same tokens per step at every T):\n\n"
        + _table(header, timing)
    )


def timing_table(records: list[dict[str, Any]]) -> str:
    rows_in = [r for r in _main(records) if r["task"] == "timing"]
    if not rows_in:
        return ""
    lengths = sorted({r["T"] for r in rows_in})
    present = [m for m in MODELS if any(r["model"] == m for r in rows_in)]
    rows = [[model, *(_cell(_values(rows_in, model=model, T=t), 0, 1e3) for t in lengths)] for model in present]
    tokens = rows_in[0]["batch"] * rows_in[0]["T"]
    return (
        f"Milliseconds per training step, {tokens} tokens per step at every T: the fastest of"
        f" {rows_in[0]['steps']} steps, mean ± std over {len({r['seed'] for r in rows_in})} fresh models:\n\n"
        + _table(["model", *(f"T = {t}" for t in lengths)], rows)
    )


def machine(records: list[dict[str, Any]]) -> str:
    loads = [x for r in records for x in r["loadavg_1min"]]
    threads = sorted({r["threads"] for r in records})
    seconds = sum(
        r["seconds"] for r in records if not r.get("reused_from_lr_search") and r["metric"] != "seconds_per_step"
    )
    return (
        f"{len(records)} records; torch threads per process {threads}; one-minute load average during the runs"
        f" {min(loads):.1f} to {max(loads):.1f} (median {float(np.median(loads)):.1f});"
        f" {seconds / 60:.0f} minutes of training summed over the runs"
    )


def format_report(records: list[dict[str, Any]]) -> str:
    """Every table, with a heading each."""
    parts = [
        "## Machine\n\n" + machine(records),
        "## Models and learning rates\n\n" + models_table(records),
        "## Character language modelling\n\n" + char_table(records),
        "## Associative recall\n\n" + recall_table(records),
        "## Latents\n\n" + latent_table(records),
        "## Needle\n\n" + needle_tables(records),
        "## Time per step\n\n" + timing_table(records),
    ]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(format_report(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
