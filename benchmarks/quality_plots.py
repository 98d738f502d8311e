"""PNG plots of ``benchmarks/quality.py``'s records (needs matplotlib: ``pip install 'latte-ref[plot]'``).

Every plot of an outcome shows each seed as a point next to the mean, since outcomes are often bimodal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import ScalarFormatter

__all__ = ["plot_all"]

COLOURS = {
    "softmax": "tab:blue",
    "latte": "tab:red",
    "linear": "tab:green",
    "taylor": "tab:olive",
    "window": "tab:purple",
    "hybrid": "tab:orange",
    "retnet": "tab:brown",
    "abc": "tab:pink",
}


def _name(r: dict[str, Any]) -> str:
    return r["model"] + ("+conv" if r.get("conv") else "")


def _style(name: str) -> dict[str, Any]:
    return {"color": COLOURS[name.split("+")[0]], "linestyle": "--" if name.endswith("+conv") else "-"}


def _main(records: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [r for r in records if r["phase"] == "main" and r["task"] == task]


def _means_and_points(ax: Any, rows: list[dict[str, Any]], x: str, name: str) -> None:
    """The mean over seeds as a line, every seed as a faint point."""
    xs = sorted({r[x] for r in rows})
    means = [float(np.mean([r["value"] for r in rows if r[x] == v])) for v in xs]
    ax.plot(xs, means, marker="o", label=name, **_style(name))
    ax.scatter([r[x] for r in rows], [r["value"] for r in rows], color=_style(name)["color"], alpha=0.35, s=12)


def against(records: list[dict[str, Any]], task: str, x: str, fixed: dict[str, Any], path: Path) -> Path | None:
    """Each model's metric against setting ``x`` (others fixed), mean line and per-seed points."""
    rows = [r for r in _main(records, task) if all(r.get(k) == v for k, v in fixed.items())]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for name in sorted({_name(r) for r in rows}):
        _means_and_points(ax, [r for r in rows if _name(r) == name], x, name)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    where = ", ".join(f"{k}={v}" for k, v in fixed.items())
    ax.set(xlabel=x, ylabel=rows[0]["metric"], title=f"{task} {where}: mean (line), seeds (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def state_size(records: list[dict[str, Any]], path: Path) -> Path | None:
    """MQAR accuracy against the numbers a decoder carries per layer (log scale), as in Based."""
    sweep = [r for r in records if r["phase"] == "state_sweep"]
    if not sweep:
        return None
    keys = {k: sweep[0][k] for k in ("n_pairs", "T", "conv")}
    rows = sweep + [r for r in _main(records, "mqar") if all(r.get(k) == v for k, v in keys.items())]
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for name in sorted({_name(r) for r in rows}):
        _means_and_points(ax, [r for r in rows if _name(r) == name], "state_per_layer", name)
    ax.set_xscale("log")
    ax.set(
        xlabel="numbers a decoder carries per layer",
        ylabel="MQAR accuracy",
        title=f"MQAR, {keys['n_pairs']} pairs, T = {keys['T']}: accuracy against state size",
    )
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def learning_curves(records: list[dict[str, Any]], task: str, path: Path) -> Path | None:
    """Validation loss against steps at the task's hardest setting, one line per seed and model."""
    rows = _main(records, task)
    if not rows:
        return None
    hardest = max(rows, key=lambda r: (r.get("T") or 0, r.get("n_pairs") or r.get("n_tokens") or 0))
    keys = {k: hardest.get(k) for k in ("T", "n_pairs", "n_tokens") if hardest.get(k) is not None}
    fig, ax = plt.subplots(figsize=(7, 4.6))
    seen: set[str] = set()
    for r in rows:
        if any(r.get(k) != v for k, v in keys.items()):
            continue
        name = _name(r)
        steps = [p["step"] for p in r["curve"]]
        losses = [p["validation_loss"] for p in r["curve"]]
        ax.plot(steps, losses, alpha=0.7, label=None if name in seen else name, **_style(name))
        seen.add(name)
    where = ", ".join(f"{k}={v}" for k, v in keys.items())
    ax.set(xlabel="training step", ylabel="validation loss (nats)", title=f"{task} ({where}): one line per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def timing(records: list[dict[str, Any]], path: Path) -> Path | None:
    rows = _main(records, "timing")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for name in sorted({_name(r) for r in rows}):
        mine = [{**r, "value": r["value"] * 1e3} for r in rows if _name(r) == name]
        _means_and_points(ax, mine, "T", name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set(xlabel="T", ylabel="ms per training step", title=f"{rows[0]['batch'] * rows[0]['T']} tokens per step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_all(records: list[dict[str, Any]], output: Path) -> list[Path]:
    """Every plot the records allow; return their paths."""
    written: list[Path | None] = [learning_curves(records, t, output / f"curves_{t}.png") for t in ("char", "mqar")]
    written.append(against(records, "recall", "n_pairs", {}, output / "recall_pairs.png"))
    for length in sorted({r["T"] for r in _main(records, "mqar")}):
        written.append(against(records, "mqar", "n_pairs", {"T": length}, output / f"mqar_T{length}.png"))
    written.append(against(records, "copy", "T", {}, output / "copy_length.png"))
    written.append(against(records, "needle", "T", {}, output / "needle_length.png"))
    written.append(state_size(records, output / "mqar_state_size.png"))
    written.append(timing(records, output / "timing.png"))
    return [p for p in written if p is not None]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
