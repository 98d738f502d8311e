"""The training loop of ``benchmarks/quality.py``, its evaluation, and the rule that picks a learning rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from quality_models import TinyTransformer, count_parameters
from quality_tasks import IGNORE

__all__ = ["Trained", "choose_lr", "evaluate", "learning_rate", "masked_loss", "train"]

Batch = tuple[torch.Tensor, torch.Tensor]


# -- training ------------------------------------------------------------------------------------


def learning_rate(step: int, peak: float, total: int) -> float:
    """Linear warm-up over a tenth of the steps (at most 50), then cosine decay to a tenth of the peak."""
    warm = min(1.0, (step + 1) / max(1, min(50, total // 10)))
    progress = min(1.0, step / max(1, total))
    return peak * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def masked_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy (nats) over the scored positions: logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: TinyTransformer, batches: Sequence[Batch]) -> dict[str, float]:
    """Loss (nats per scored position) and accuracy (argmax equals the target) over ``batches``."""
    model.eval()
    total_loss, total_right, total_scored = 0.0, 0, 0
    for inputs, targets in batches:
        logits = model(inputs)
        scored = targets != IGNORE
        n = int(scored.sum())
        total_loss += float(masked_loss(logits, targets)) * n
        total_right += int((logits.argmax(-1) == targets)[scored].sum())
        total_scored += n
    model.train()
    return {"loss": total_loss / total_scored, "accuracy": total_right / total_scored}


@dataclass
class Trained:
    """What one training run gives: the final evaluations, the curve and the times."""

    validation: dict[str, float]
    test: dict[str, float]
    curve: list[dict[str, float]]
    seconds: float
    seconds_per_step: float
    n_params: int


def train(
    model: TinyTransformer,
    next_batch: Callable[[np.random.Generator], Batch],
    *,
    steps: int,
    lr: float,
    seed: int,
    validation: Sequence[Batch],
    test: Sequence[Batch],
    curve_points: int,
) -> Trained:
    """AdamW (weight decay 0.01, gradients clipped to norm 1) for ``steps`` steps on ``next_batch``'s batches.

    The curve holds the mean training loss since the previous point and the loss on the first
    validation batch, at ``curve_points`` evenly spaced steps. ``seconds_per_step`` is the median over the
    steps of one optimiser step (data excluded), to be read with the machine's load.
    """
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(1000 + seed)
    marks = {round(steps * (i + 1) / curve_points) - 1 for i in range(curve_points)}
    curve: list[dict[str, float]] = []
    step_times: list[float] = []
    since: list[float] = []
    began = time.perf_counter()
    for step in range(steps):
        inputs, targets = next_batch(rng)
        started = time.perf_counter()
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, lr, steps)
        loss = masked_loss(model(inputs), targets)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        step_times.append(time.perf_counter() - started)
        since.append(float(loss.detach()))
        if step in marks:
            point = evaluate(model, validation[:1])
            curve.append({"step": step + 1, "train_loss": float(np.mean(since)), "validation_loss": point["loss"]})
            since = []
    seconds = time.perf_counter() - began
    return Trained(
        validation=evaluate(model, validation),
        test=evaluate(model, test),
        curve=curve,
        seconds=seconds,
        seconds_per_step=float(np.median(step_times)),
        n_params=count_parameters(model),
    )


def choose_lr(trials: Sequence[dict[str, Any]], metric: str) -> float:
    """The learning rate of the best trial: ``trials`` are ``{"lr", "validation", "validation_loss"}``.

    Best is the lowest validation loss when ``metric`` is ``"loss"``, else the highest
    validation ``metric`` (accuracy); ties (equal to 9 decimals) go to the lower validation
    loss, then to the smaller learning rate.
    """
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    if not trials:
        raise ValueError("trials must not be empty")
    sign = 1.0 if metric == "loss" else -1.0
    best = min(trials, key=lambda r: (round(sign * r["validation"], 9), r["validation_loss"], r["lr"]))
    return float(best["lr"])
