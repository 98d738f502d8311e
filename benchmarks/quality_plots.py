"""PNG plots of ``benchmarks/quality.py``'s records (needs matplotlib: ``pip install 'latte-ref[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import ScalarFormatter

__all__ = ["plot_all"]

STYLE = {"softmax": ("tab:blue", "o"), "latte": ("tab:red", "s"), "linear": ("tab:green", "^")}


def _main(records: list[dict[str, Any]], task: str, metric: str) -> list[dict[str, Any]]:
    return [r for r in records if r["phase"] == "main" and r["task"] == task and r["metric"] == metric]


def _mean_std(records: list[dict[str, Any]], x: str, model: str) -> tuple[list[float], list[float], list[float]]:
    """Per value of ``x``: the mean and standard deviation over seeds of ``value``."""
    xs = sorted({r[x] for r in records if r["model"] == model})
    means, stds = [], []
    for value in xs:
        ys = [r["value"] for r in records if r["model"] == model and r[x] == value]
        means.append(float(np.mean(ys)))
        stds.append(float(np.std(ys, ddof=1)) if len(ys) > 1 else 0.0)
    return xs, means, stds


def learning_curves(records: list[dict[str, Any]], task: str, setting: dict[str, Any], path: Path) -> Path:
    """Validation loss against steps, one line per seed, one colour per model."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in _main(records, task, "held_out_nats_per_char" if task == "char" else "accuracy"):
        if any(r.get(k) != v for k, v in setting.items()):
            continue
        colour, _ = STYLE[r["model"]]
        steps = [p["step"] for p in r["curve"]]
        losses = [p["validation_loss"] for p in r["curve"]]
        ax.plot(steps, losses, color=colour, alpha=0.8, label=r["model"] if r["seed"] == min_seed(records) else None)
    where = ", ".join(f"{k}={v}" for k, v in setting.items())
    ax.set(xlabel="training step", ylabel="validation loss (nats)", title=f"{task} ({where}): one line per seed")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def min_seed(records: list[dict[str, Any]]) -> int:
    return min(r["seed"] for r in records)


def recall_against_pairs(records: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    rows = _main(records, "recall", "accuracy")
    for model, (colour, marker) in STYLE.items():
        xs, means, stds = _mean_std(rows, "n_pairs", model)
        if xs:
            ax.errorbar(xs, means, yerr=stds, color=colour, marker=marker, capsize=3, label=model)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set(xlabel="key-value pairs in context", ylabel="recall accuracy", title="recall: mean ± std over seeds")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def recall_against_latents(records: list[dict[str, Any]], path: Path) -> Path | None:
    sweep = [r for r in records if r["task"] == "recall" and r["model"] == "latte" and r["phase"] != "lr_search"]
    pairs = {r["n_pairs"] for r in records if r["phase"] == "latent_sweep"}
    if not pairs:
        return None
    (n_pairs,) = pairs
    sweep = [r for r in sweep if r["n_pairs"] == n_pairs]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs, means, stds = _mean_std(sweep, "n_latents", "latte")
    ax.errorbar(xs, means, yerr=stds, color=STYLE["latte"][0], marker="s", capsize=3, label="latte")
    for model in ("softmax", "linear"):
        ys = [
            r["value"] for r in _main(records, "recall", "accuracy") if r["model"] == model and r["n_pairs"] == n_pairs
        ]
        if ys:
            ax.axhline(float(np.mean(ys)), color=STYLE[model][0], linestyle="--", label=f"{model} (mean)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set(
        xlabel="latents L over all heads",
        ylabel="recall accuracy",
        title=f"recall with {n_pairs} pairs against Latte's latents",
    )
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def needle_against_length(records: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against T (left); seconds per training step against T (right), from the timing task if run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    timing = _main(records, "timing", "seconds_per_step_min")
    if not timing:
        timing = _main(records, "needle", "seconds_per_step")
    for model, (colour, marker) in STYLE.items():
        xs, means, stds = _mean_std(_main(records, "needle", "accuracy"), "T", model)
        if xs:
            left.errorbar(xs, means, yerr=stds, color=colour, marker=marker, capsize=3, label=model)
        xs, means, stds = _mean_std(timing, "T", model)
        if xs:
            ms, ms_std = [m * 1e3 for m in means], [s * 1e3 for s in stds]
            right.errorbar(xs, ms, yerr=ms_std, color=colour, marker=marker, capsize=3, label=model)
    left.set(xlabel="sequence length T", ylabel="accuracy", title="needle: accuracy, mean ± std over seeds")
    left.set_ylim(0, 1.02)
    right.set(
        xlabel="sequence length T",
        ylabel="ms per training step",
        title=f"{timing[0]['batch'] * timing[0]['T'] if timing else ''} tokens per step at every T",
    )
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_all(records: list[dict[str, Any]], output: Path) -> list[Path]:
    """Every plot the records allow; return their paths."""
    written: list[Path | None] = []
    tasks = {r["task"] for r in records}
    if "char" in tasks:
        written.append(learning_curves(records, "char", {}, output / "curves_char.png"))
    if "recall" in tasks:
        largest = max(r["n_pairs"] for r in _main(records, "recall", "accuracy"))
        written.append(learning_curves(records, "recall", {"n_pairs": largest}, output / "curves_recall.png"))
        written.append(recall_against_pairs(records, output / "recall_pairs.png"))
        written.append(recall_against_latents(records, output / "recall_latents.png"))
    if "needle" in tasks:
        longest = max(r["T"] for r in _main(records, "needle", "accuracy"))
        written.append(learning_curves(records, "needle", {"T": longest}, output / "curves_needle.png"))
        written.append(needle_against_length(records, output / "needle_length.png"))
    return [p for p in written if p is not None]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
