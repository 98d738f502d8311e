"""The budgets of ``benchmarks/quality.py`` (:class:`Config`) and each task at each setting (:class:`Setting`).

Each task lists its settings from easiest to hardest; the last one is where every model's
learning rate is chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from quality_models import ATTENTIONS
from quality_tasks import (
    CharText,
    copy_batch,
    copy_vocab_size,
    mqar_batch,
    needle_batch,
    needle_vocab_size,
    recall_batch,
    recall_vocab_size,
    stdlib_corpus,
)

__all__ = ["TASKS", "Config", "Setting", "full", "quick", "task_settings"]

TASKS = ("char", "recall", "mqar", "copy", "needle", "timing")
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """Model size, budgets and settings of one run of the benchmark (see :func:`quick` and :func:`full`)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_latents: int = 64  # over all heads: 4 heads of 16, so that Latte's wq, wk are as large as softmax's
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the cheap tasks: recall, mqar, copy, needle
    char_seeds: tuple[int, ...] = (0, 1, 2)
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    char_steps: int = 1000
    char_batch: int = 16
    char_length: int = 128
    char_corpus_bytes: int = 2_000_000
    char_held_out: int = 131_072  # first half validates, second half (65,536 bytes) is reported
    recall_steps: int = 500
    recall_batch: int = 32
    recall_pairs: tuple[int, ...] = (4, 16, 32)
    mqar_steps: int = 1000
    mqar_batch: int = 32
    mqar_vocab: int = 1024
    mqar_settings: tuple[tuple[int, int], ...] = ((64, 4), (64, 16), (128, 16), (128, 32), (256, 32), (256, 64))
    mqar_conv: tuple[bool, ...] = (False, True)
    state_sweep_setting: tuple[int, int] = (128, 32)  # (T, pairs) of the state-size sweep, with the convolution
    state_sweep: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("latte", (16, 32, 128, 256)),
        ("linear", (4, 8, 32)),
        ("taylor", (4, 16)),
        ("window", (8, 16, 64)),
        ("abc", (16, 32, 128)),
    )
    copy_steps: int = 1000
    copy_batch: int = 32
    copy_settings: tuple[tuple[int, int], ...] = ((64, 8), (128, 16), (256, 16))  # (T, tokens to copy)
    needle_steps: int = 300
    needle_batch: int = 8  # sequences per step at every T
    needle_lengths: tuple[int, ...] = (256, 512, 1024, 2048)
    eval_sequences: int = 256  # per validation and per test set of the generated tasks
    eval_batch: int = 64
    timing_lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    timing_steps: int = 5  # timed steps after 2 untimed ones; the fastest is the record
    timing_tokens: int = 4096  # tokens per timed step: batch = timing_tokens // T
    curve_points: int = 10
    models: tuple[str, ...] = ATTENTIONS
    tasks: tuple[str, ...] = TASKS
    threads: int = 1  # one thread: on a shared 2-core machine, two threads each wait on the other
    sizes: dict[str, int] = field(default_factory=dict)  # the attentions' sizes where not the default


def quick() -> Config:
    """Tiny budgets: every task, model and kind of record, within a few minutes on two cores."""
    return Config(
        d_model=32,
        n_latents=32,
        seeds=(0,),
        char_seeds=(0,),
        lr_grid=(3e-3, 1e-2),
        char_steps=20,
        char_length=64,
        char_corpus_bytes=200_000,
        char_held_out=8192,
        recall_steps=20,
        recall_pairs=(4, 8),
        mqar_steps=20,
        mqar_batch=16,
        mqar_settings=((32, 4), (64, 8)),
        state_sweep_setting=(64, 8),
        state_sweep=(("latte", (8,)), ("linear", (4,)), ("window", (8,))),
        copy_steps=20,
        copy_batch=16,
        copy_settings=((32, 4), (64, 8)),
        needle_steps=10,
        needle_batch=4,
        needle_lengths=(64, 128),
        eval_sequences=32,
        eval_batch=32,
        timing_lengths=(128, 256),
        timing_steps=2,
        timing_tokens=512,
        curve_points=4,
    )


def full() -> Config:
    """The budgets of docs/comparison.md."""
    return Config()


@dataclass(frozen=True)
class Setting:
    """One task at one setting: how to build the model and its data, and what to report."""

    task: str
    metric: str  # of the evaluations: "loss" or "accuracy"
    reported: str  # its name in the records
    vocab_size: int
    steps: int
    next_batch: Callable[[np.random.Generator], Batch]
    validation: Sequence[Batch]
    test: Sequence[Batch]
    keys: dict[str, Any]


def _fixed(config: Config, seed: int, draw: Callable[[int, np.random.Generator], Batch]) -> list[Batch]:
    """``eval_sequences`` sequences drawn once from ``seed``, ``eval_batch`` at a time: the same for every run."""
    rng = np.random.default_rng(seed)
    sizes = [config.eval_batch] * (config.eval_sequences // config.eval_batch)
    sizes += [config.eval_sequences % config.eval_batch] if config.eval_sequences % config.eval_batch else []
    return [draw(n, rng) for n in sizes]


def char_settings(config: Config) -> list[Setting]:
    corpus, _, _ = stdlib_corpus(config.char_corpus_bytes)
    text = CharText(corpus, config.char_held_out)
    windows = text.held_out_batches(config.char_length, config.eval_batch)
    half = len(windows) // 2  # first half validates (chooses the lr), second half is reported
    return [
        Setting(
            task="char",
            metric="loss",
            reported="held_out_nats_per_byte",
            vocab_size=text.vocab_size,
            steps=config.char_steps,
            next_batch=lambda rng: text.batch(config.char_batch, config.char_length, rng),
            validation=windows[:half],
            test=windows[half:],
            keys={"T": config.char_length, "batch": config.char_batch},
        )
    ]


def recall_settings(config: Config) -> list[Setting]:
    def one(n_pairs: int) -> Setting:
        return Setting(
            task="recall",
            metric="accuracy",
            reported="accuracy",
            vocab_size=recall_vocab_size(),
            steps=config.recall_steps,
            next_batch=lambda rng: recall_batch(config.recall_batch, n_pairs, rng),
            validation=_fixed(config, 10_000 + n_pairs, lambda b, rng: recall_batch(b, n_pairs, rng)),
            test=_fixed(config, 20_000 + n_pairs, lambda b, rng: recall_batch(b, n_pairs, rng)),
            keys={"n_pairs": n_pairs, "T": 2 * n_pairs, "batch": config.recall_batch},
        )

    return [one(n) for n in config.recall_pairs]


def mqar_setting(config: Config, length: int, n_pairs: int) -> Setting:
    vocab = config.mqar_vocab

    def draw(b: int, rng: np.random.Generator) -> Batch:
        return mqar_batch(b, length, n_pairs, vocab, rng)

    return Setting(
        task="mqar",
        metric="accuracy",
        reported="accuracy",
        vocab_size=vocab,
        steps=config.mqar_steps,
        next_batch=lambda rng: draw(config.mqar_batch, rng),
        validation=_fixed(config, 50_000 + 1000 * n_pairs + length, draw),
        test=_fixed(config, 60_000 + 1000 * n_pairs + length, draw),
        keys={"n_pairs": n_pairs, "T": length, "batch": config.mqar_batch},
    )


def copy_settings(config: Config) -> list[Setting]:
    def one(length: int, n_tokens: int) -> Setting:
        def draw(b: int, rng: np.random.Generator) -> Batch:
            return copy_batch(b, length, n_tokens, rng)

        return Setting(
            task="copy",
            metric="accuracy",
            reported="accuracy",
            vocab_size=copy_vocab_size(),
            steps=config.copy_steps,
            next_batch=lambda rng: draw(config.copy_batch, rng),
            validation=_fixed(config, 70_000 + 1000 * n_tokens + length, draw),
            test=_fixed(config, 80_000 + 1000 * n_tokens + length, draw),
            keys={"n_tokens": n_tokens, "T": length, "batch": config.copy_batch},
        )

    return [one(length, n) for length, n in config.copy_settings]


def needle_settings(config: Config) -> list[Setting]:
    def one(length: int) -> Setting:
        def draw(b: int, rng: np.random.Generator) -> Batch:
            return needle_batch(b, length, rng, last_only=True)

        return Setting(
            task="needle",
            metric="accuracy",
            reported="accuracy",
            vocab_size=needle_vocab_size(),
            steps=config.needle_steps,
            next_batch=lambda rng: needle_batch(config.needle_batch, length, rng),
            validation=_fixed(config, 30_000 + length, draw),
            test=_fixed(config, 40_000 + length, draw),
            keys={"T": length, "batch": config.needle_batch},
        )

    return [one(length) for length in config.needle_lengths]


def task_settings(config: Config, task: str) -> list[Setting]:
    """The settings of ``task``, easiest first; the last is the hardest, where learning rates are chosen."""
    if task == "char":
        return char_settings(config)
    if task == "recall":
        return recall_settings(config)
    if task == "mqar":
        return [mqar_setting(config, length, n) for length, n in config.mqar_settings]
    if task == "copy":
        return copy_settings(config)
    if task == "needle":
        return needle_settings(config)
    raise ValueError(f"task must be one of {TASKS[:-1]}, got {task!r}")


def corpus_record(config: Config) -> dict[str, Any]:
    """What identifies the char corpus: its bytes, SHA-256 and number of files."""
    corpus, sha256, n_files = stdlib_corpus(config.char_corpus_bytes)
    return {
        "corpus": "python-stdlib-py-sorted",
        "corpus_bytes": len(corpus),
        "corpus_sha256": sha256,
        "corpus_files": n_files,
    }
