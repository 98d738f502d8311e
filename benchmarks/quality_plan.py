"""The plan of ``benchmarks/quality.py``: every training run in order, and the loop that runs them.

First each task's learning-rate search (the first seed, at the task's hardest setting, every
model and lr of the grid), then every setting, seed and model at the chosen lr, then the
state-size sweep on MQAR. Every record is written to ``results.json`` as soon as it exists.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from quality_models import DEFAULT_SIZES, TinyTransformer, count_parameters, state_per_layer
from quality_settings import Config, Setting, corpus_record, mqar_setting, task_settings
from quality_tasks import needle_batch, needle_vocab_size
from quality_train import choose_lr, masked_loss, train

__all__ = ["Job", "plan", "run", "time_steps", "write"]


@dataclass(frozen=True)
class Job:
    """One training run: a setting, a model (with or without the convolution, at a size), a seed, an lr."""

    phase: str  # "lr_search", "main" or "state_sweep"
    setting: Setting
    model: str
    conv: bool
    size: int | None  # None: the config's size for this model
    seed: int
    lr: float | None  # None: the lr chosen for (task, model, conv)


def _size(config: Config, model: str, size: int | None) -> int | None:
    """The size a run uses: the job's, else the config's, else the default; Latte's default is n_latents."""
    chosen = size if size is not None else config.sizes.get(model, DEFAULT_SIZES[model])
    return config.n_latents if model == "latte" and chosen is None else chosen


def plan(config: Config) -> list[Job]:
    """Every run, in order: the lr searches, then the seeds of every setting, then the state-size sweep."""
    settings = {task: task_settings(config, task) for task in config.tasks if task != "timing"}
    convs = {task: config.mqar_conv if task == "mqar" else (False,) for task in settings}
    seeds = {task: config.char_seeds if task == "char" else config.seeds for task in settings}
    jobs = [
        Job("lr_search", settings[task][-1], model, conv, None, seeds[task][0], lr)
        for task in settings
        for model in config.models
        for conv in convs[task]
        for lr in config.lr_grid
    ]
    jobs += [
        Job("main", setting, model, conv, None, seed, None)
        for task in settings
        for setting in settings[task]
        for seed in seeds[task]
        for model in config.models
        for conv in convs[task]
    ]
    if "mqar" in settings:
        conv = True in config.mqar_conv
        sweep = mqar_setting(config, *config.state_sweep_setting)
        jobs += [
            Job("state_sweep", sweep, model, conv, size, seed, None)
            for model, sizes in config.state_sweep
            if model in config.models
            for size in sizes
            for seed in config.seeds
        ]
    return jobs


def run_setting(config: Config, job: Job, lr: float) -> list[dict[str, Any]]:
    """Train one model on one setting with one seed; its record."""
    torch.manual_seed(job.seed)
    setting, size = job.setting, _size(config, job.model, job.size)
    model = TinyTransformer(
        job.model, setting.vocab_size, config.d_model, config.n_layers, config.n_heads, config.n_latents, size, job.conv
    )
    load_before = os.getloadavg()[0]
    trained = train(
        model,
        setting.next_batch,
        steps=setting.steps,
        lr=lr,
        seed=job.seed,
        validation=setting.validation,
        test=setting.test,
        curve_points=config.curve_points,
    )
    record: dict[str, Any] = {
        "phase": job.phase,
        "task": setting.task,
        "model": job.model,
        "conv": job.conv,
        "size": size,
        "seed": job.seed,
        "metric": setting.reported,
        "value": trained.test[setting.metric],
        "test_loss": trained.test["loss"],
        "n_params": trained.n_params,
        "steps": setting.steps,
        "seconds": trained.seconds,
        **setting.keys,
        "n_latents": config.n_latents if job.model in ("latte", "hybrid") else None,
        "state_per_layer": state_per_layer(
            job.model, config.d_model, config.n_heads, config.n_latents, size, setting.keys["T"], job.conv
        ),
        "lr": lr,
        "validation": trained.validation[setting.metric],
        "validation_loss": trained.validation["loss"],
        "test_sequences": sum(int(batch[0].shape[0]) for batch in setting.test),
        "seconds_per_step": trained.seconds_per_step,
        "curve": trained.curve,
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "threads": torch.get_num_threads(),
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }
    if setting.task == "char":
        record.update(corpus_record(config))
    return [record]


def _same_run(job: Job, record: dict[str, Any], lr: float, size: int | None) -> bool:
    """Whether an lr-search record is the run ``job`` asks for (so it is not trained twice)."""
    return (record["task"], record["model"], record["conv"], record["size"], record["seed"], record["lr"]) == (
        job.setting.task,
        job.model,
        job.conv,
        size,
        job.seed,
        lr,
    ) and all(record.get(k) == v for k, v in job.setting.keys.items())


def run(config: Config, output: Path, progress: Callable[[int, int, str, float], None] | None = None) -> list[dict]:
    """Run the plan, rewriting ``output/results.json`` after every run; return the records."""
    output.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    jobs = plan(config)
    records: list[dict[str, Any]] = []
    chosen: dict[tuple[str, str, bool], float] = {}
    started = time.perf_counter()
    for i, job in enumerate(jobs):
        key = (job.setting.task, job.model, job.conv)
        if job.lr is None and key not in chosen:
            trials = [r for r in records if r["phase"] == "lr_search" and (r["task"], r["model"], r["conv"]) == key]
            chosen[key] = choose_lr(trials, job.setting.metric)
        lr = job.lr if job.lr is not None else chosen[key]
        size = _size(config, job.model, job.size)
        keys = " ".join(f"{k}={v}" for k, v in job.setting.keys.items() if k != "batch")
        name = job.model + ("+conv" if job.conv else "")
        label = f"{job.phase} {job.setting.task} {name} size={size} seed {job.seed} lr {lr:g} {keys}"
        if progress:
            progress(i, len(jobs), label, started)
        reused = [r for r in records if r["phase"] == "lr_search" and _same_run(job, r, lr, size)]
        if job.phase != "lr_search" and reused:
            records += [{**r, "phase": job.phase, "reused_from_lr_search": True} for r in reused]
        else:
            records += run_setting(config, job, lr)
        write(output, records)
    if "timing" in config.tasks:
        if progress:
            progress(len(jobs), len(jobs), "timing", started)
        records += time_steps(config)
        write(output, records)
    if progress:
        progress(len(jobs), len(jobs), "done", started)
    return records


def time_steps(config: Config) -> list[dict[str, Any]]:
    """Seconds per training step of each model against T, apart from training: the fastest of a few steps.

    The needle's batches, ``timing_tokens`` tokens per step at every T, lr 1e-3. On a shared
    machine the fastest step is the least disturbed one; each seed (a fresh model) is one measurement.
    """
    records = []
    for length in config.timing_lengths:
        for seed in config.seeds[:3]:
            for kind in config.models:
                torch.manual_seed(seed)
                size = _size(config, kind, None)
                model = TinyTransformer(
                    kind, needle_vocab_size(), config.d_model, config.n_layers, config.n_heads, config.n_latents, size
                )
                optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
                rng = np.random.default_rng(seed)
                batch = max(1, config.timing_tokens // length)
                load_before = os.getloadavg()[0]
                times = []
                for step in range(2 + config.timing_steps):
                    inputs, targets = needle_batch(batch, length, rng)
                    started = time.perf_counter()
                    loss = masked_loss(model(inputs), targets)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    if step >= 2:
                        times.append(time.perf_counter() - started)
                records.append(
                    {
                        "phase": "main",
                        "task": "timing",
                        "model": kind,
                        "conv": False,
                        "size": size,
                        "seed": seed,
                        "metric": "seconds_per_step_min",
                        "value": min(times),
                        "n_params": count_parameters(model),
                        "steps": config.timing_steps,
                        "seconds": sum(times),
                        "T": length,
                        "batch": batch,
                        "n_latents": config.n_latents if kind in ("latte", "hybrid") else None,
                        "lr": 1e-3,
                        "d_model": config.d_model,
                        "threads": torch.get_num_threads(),
                        "loadavg_1min": [load_before, os.getloadavg()[0]],
                    }
                )
    return records


def write(output: Path, records: list[dict[str, Any]]) -> None:
    """``output/results.json``, written to a temporary file first so that a reader never sees half of it."""
    path = output / "results.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)
