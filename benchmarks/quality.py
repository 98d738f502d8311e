"""Latte against softmax attention and linear attention, trained on small tasks a CPU reruns in minutes.

Three models, identical except for their attention (``benchmarks/quality_models.py``):
``softmax`` (``scaled_dot_product_attention``), ``latte`` (``latte_ref.layers.torch.LatteAttention``)
and ``linear`` (causal linear attention, elu + 1 features). Each is trained with AdamW, the
same schedule and the same number of steps, on three tasks (``benchmarks/quality_tasks.py``):

- ``char``: character language modelling on ``examples/data/coriolanus.txt``; held-out nats per character;
- ``recall``: multi-query associative recall; accuracy against the number of key-value pairs,
  and, for Latte, against the number of latents;
- ``needle``: a token hidden far back among blanks must be named at the end; accuracy against T;
- ``timing``: seconds per training step against T at a fixed number of tokens per step (no training).

Each model's learning rate is chosen per task from the same grid, on the first seed, by a
validation set that is not the one reported; then every seed trains with it.

    python benchmarks/quality.py --quick --output results/quality-quick        # under a minute
    python benchmarks/quality.py --workers 3 --output results/quality          # the full run, about half an hour

The full run's figures, and what they show, are in docs/comparison.md.

``DIR/results.json`` is a list of records (``task``, ``model``, ``seed``, ``metric``, ``value``,
``n_params``, ``steps``, ``seconds``, and the setting: ``n_pairs``, ``T``, ``n_latents``, ``lr``, ...);
it is rewritten after every training run. With matplotlib, the full run also draws PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_models import ATTENTIONS, TinyTransformer, count_parameters
from quality_report import format_report
from quality_tasks import (
    IGNORE,
    CharText,
    needle_batch,
    needle_vocab_size,
    recall_batch,
    recall_vocab_size,
)

TASKS = ("char", "recall", "needle", "timing")
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """Model size, budgets and settings of one run of the benchmark (see :func:`quick` and :func:`full`)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_latents: int = 64  # over all heads: 4 heads of 16, so that Latte's wq, wk are as large as softmax's
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_grid: tuple[float, ...] = (1e-3, 3e-3)
    char_steps: int = 400
    char_batch: int = 16
    char_length: int = 128
    recall_steps: int = 500
    recall_batch: int = 32
    recall_pairs: tuple[int, ...] = (4, 16, 32)
    recall_tune_pairs: int = 16
    latent_sweep: tuple[int, ...] = (8, 16, 32, 64, 128)
    latent_sweep_pairs: int = 32
    needle_steps: int = 250
    needle_tokens: int = 2048  # tokens per step: batch = needle_tokens // T
    needle_lengths: tuple[int, ...] = (256, 512, 1024, 2048)
    timing_lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    timing_steps: int = 5  # timed steps after 2 untimed ones; the fastest is the record
    timing_tokens: int = 4096  # tokens per timed step: batch = timing_tokens // T
    eval_batches: int = 4
    curve_points: int = 10
    models: tuple[str, ...] = ATTENTIONS
    tasks: tuple[str, ...] = TASKS
    threads: int = 1  # one thread: on a shared 2-core machine, two threads each wait on the other


def quick() -> Config:
    """Tiny budgets: every task, model and kind of record, in about a minute on two cores."""
    return Config(
        d_model=32,
        n_latents=32,
        seeds=(0,),
        char_steps=40,
        char_length=64,
        recall_steps=40,
        recall_pairs=(4, 8),
        recall_tune_pairs=8,
        latent_sweep=(8, 16),
        latent_sweep_pairs=8,
        needle_steps=15,
        needle_tokens=1024,
        needle_lengths=(256, 512),
        timing_lengths=(256, 512),
        timing_steps=2,
        timing_tokens=512,
        eval_batches=1,
        curve_points=5,
    )


def full() -> Config:
    """The budgets of docs/comparison.md: about half an hour on two cores."""
    return Config()


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


# -- the tasks as runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One task at one setting: how to build the model and its data, and what to report."""

    task: str
    metric: str  # of the test evaluation: "loss" or "accuracy"
    reported: str  # its name in the records
    vocab_size: int
    steps: int
    next_batch: Callable[[np.random.Generator], Batch]
    validation: Sequence[Batch]
    test: Sequence[Batch]
    keys: dict[str, Any]
    n_latents: int


def char_setting(config: Config, text: CharText) -> Setting:
    held_out = text.held_out_batch(config.char_length)
    half = held_out[0].shape[0] // 2  # first half validates (chooses the lr), second half is reported
    return Setting(
        task="char",
        metric="loss",
        reported="held_out_nats_per_char",
        vocab_size=len(text.vocab),
        steps=config.char_steps,
        next_batch=lambda rng: text.batch(config.char_batch, config.char_length, rng),
        validation=[(held_out[0][:half], held_out[1][:half])],
        test=[(held_out[0][half:], held_out[1][half:])],
        keys={"T": config.char_length, "batch": config.char_batch},
        n_latents=config.n_latents,
    )


def recall_setting(config: Config, n_pairs: int, n_latents: int) -> Setting:
    def fixed(seed: int) -> list[Batch]:
        rng = np.random.default_rng(seed)
        return [recall_batch(64, n_pairs, rng) for _ in range(config.eval_batches)]

    return Setting(
        task="recall",
        metric="accuracy",
        reported="accuracy",
        vocab_size=recall_vocab_size(),
        steps=config.recall_steps,
        next_batch=lambda rng: recall_batch(config.recall_batch, n_pairs, rng),
        validation=fixed(10_000 + n_pairs),
        test=fixed(20_000 + n_pairs),
        keys={"n_pairs": n_pairs, "T": 2 * n_pairs, "batch": config.recall_batch},
        n_latents=n_latents,
    )


def needle_setting(config: Config, length: int) -> Setting:
    batch = max(1, config.needle_tokens // length)

    def fixed(seed: int) -> list[Batch]:
        rng = np.random.default_rng(seed)
        return [needle_batch(16, length, rng, far_only=True) for _ in range(config.eval_batches)]

    return Setting(
        task="needle",
        metric="accuracy",
        reported="accuracy",
        vocab_size=needle_vocab_size(),
        steps=config.needle_steps,
        next_batch=lambda rng: needle_batch(batch, length, rng),
        validation=fixed(30_000 + length),
        test=fixed(40_000 + length),
        keys={"T": length, "batch": batch},
        n_latents=config.n_latents,
    )


def run_setting(config: Config, setting: Setting, model_kind: str, seed: int, lr: float) -> list[dict[str, Any]]:
    """Train one model on one setting with one seed; its records (two for ``needle``: accuracy and step time)."""
    torch.manual_seed(seed)
    model = TinyTransformer(
        model_kind, setting.vocab_size, config.d_model, config.n_layers, config.n_heads, setting.n_latents
    )
    load_before = os.getloadavg()[0]
    trained = train(
        model,
        setting.next_batch,
        steps=setting.steps,
        lr=lr,
        seed=seed,
        validation=setting.validation,
        test=setting.test,
        curve_points=config.curve_points,
    )
    record: dict[str, Any] = {
        "task": setting.task,
        "model": model_kind,
        "seed": seed,
        "metric": setting.reported,
        "value": trained.test[setting.metric],
        "n_params": trained.n_params,
        "steps": setting.steps,
        "seconds": trained.seconds,
        **setting.keys,
        "n_latents": setting.n_latents if model_kind == "latte" else None,
        "lr": lr,
        "validation": trained.validation[setting.metric],
        "seconds_per_step": trained.seconds_per_step,
        "curve": trained.curve,
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "threads": torch.get_num_threads(),
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }
    if setting.task != "needle":
        return [record]
    timing = {**record, "metric": "seconds_per_step", "value": trained.seconds_per_step, "curve": []}
    return [record, timing]


def better(metric: str, a: float, b: float) -> bool:
    """Whether validation value ``a`` beats ``b`` (lower loss, higher accuracy; ties go to the earlier)."""
    return a < b if metric == "loss" else a > b


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One training run of the plan: a setting, a model, a seed and either a fixed lr or the grid's choice."""

    phase: str  # "lr_search" or "main" or "latent_sweep"
    setting: Setting
    model: str
    seed: int
    lr: float | None  # None: the lr chosen for (task, model)


def plan(config: Config) -> list[Job]:
    """Every run, in order: first each task's lr search (first seed), then the seeds, then the latent sweep."""
    settings: dict[str, list[Setting]] = {}
    tune: dict[str, Setting] = {}
    if "char" in config.tasks:
        settings["char"] = [char_setting(config, CharText())]
        tune["char"] = settings["char"][0]
    if "recall" in config.tasks:
        settings["recall"] = [recall_setting(config, n, config.n_latents) for n in config.recall_pairs]
        tune["recall"] = recall_setting(config, config.recall_tune_pairs, config.n_latents)
    if "needle" in config.tasks:
        settings["needle"] = [needle_setting(config, length) for length in config.needle_lengths]
        tune["needle"] = settings["needle"][0]
    first = config.seeds[0]
    jobs = [
        Job("lr_search", tune[task], model, first, lr)
        for task in settings
        for model in config.models
        for lr in config.lr_grid
    ]
    jobs += [
        Job("main", setting, model, seed, None)
        for task in settings
        for setting in settings[task]
        for seed in config.seeds
        for model in config.models
    ]
    if "recall" in config.tasks and "latte" in config.models:
        jobs += [
            Job("latent_sweep", recall_setting(config, config.latent_sweep_pairs, n_latents), "latte", seed, None)
            for n_latents in config.latent_sweep
            if n_latents != config.n_latents
            for seed in config.seeds
        ]
    return jobs


def same_run(job: Job, record: dict[str, Any], lr: float) -> bool:
    """Whether an lr-search record is the run ``job`` asks for (so it is not trained twice)."""
    keys = job.setting.keys
    return (
        record["task"] == job.setting.task
        and record["model"] == job.model
        and record["seed"] == job.seed
        and record["lr"] == lr
        and all(record.get(k) == v for k, v in keys.items())
        and record["n_latents"] == (job.setting.n_latents if job.model == "latte" else None)
    )


def run(config: Config, output: Path, progress: Callable[[int, int, str, float], None] | None = None) -> list[dict]:
    """Run the plan, rewriting ``output/results.json`` after every run; return the records."""
    output.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    jobs = plan(config)
    records: list[dict[str, Any]] = []
    chosen: dict[tuple[str, str], float] = {}
    best: dict[tuple[str, str], float] = {}
    started = time.perf_counter()
    for i, job in enumerate(jobs):
        key = (job.setting.task, job.model)
        lr = job.lr if job.lr is not None else chosen[key]
        label = f"{job.phase} {job.setting.task} {job.model} seed {job.seed} lr {lr:g} {_describe(job.setting)}"
        if progress:
            progress(i, len(jobs), label, started)
        reused = [r for r in records if r["phase"] == "lr_search" and same_run(job, r, lr)]
        if job.phase != "lr_search" and reused:
            new = [{**r, "phase": job.phase, "reused_from_lr_search": True} for r in reused]
        else:
            new = [{**r, "phase": job.phase} for r in run_setting(config, job.setting, job.model, job.seed, lr)]
        records += new
        if job.phase == "lr_search":
            score = new[0]["validation"]
            if key not in best or better(job.setting.metric, score, best[key]):
                best[key], chosen[key] = score, lr
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

    The needle's batches, ``timing_tokens`` tokens per step at every T; the first learning
    rate of the grid. On a shared machine the fastest step is the least disturbed one;
    each seed (a fresh model) is one measurement.
    """
    records = []
    for length in config.timing_lengths:
        for seed in config.seeds:
            for kind in config.models:
                torch.manual_seed(seed)
                model = TinyTransformer(
                    kind, needle_vocab_size(), config.d_model, config.n_layers, config.n_heads, config.n_latents
                )
                optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr_grid[0], weight_decay=0.01)
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
                        "seed": seed,
                        "metric": "seconds_per_step_min",
                        "value": min(times),
                        "n_params": count_parameters(model),
                        "steps": config.timing_steps,
                        "seconds": sum(times),
                        "T": length,
                        "batch": batch,
                        "n_latents": config.n_latents if kind == "latte" else None,
                        "lr": config.lr_grid[0],
                        "d_model": config.d_model,
                        "threads": torch.get_num_threads(),
                        "loadavg_1min": [load_before, os.getloadavg()[0]],
                    }
                )
    return records


def _describe(setting: Setting) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.keys.items() if k != "batch") + (
        f" L={setting.n_latents}" if setting.task == "recall" else ""
    )


def write(output: Path, records: list[dict[str, Any]]) -> None:
    """``output/results.json``, written to a temporary file first so that a reader never sees half of it."""
    path = output / "results.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


# -- summary -------------------------------------------------------------------------------------


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every (phase, task, metric, setting, model) of the main runs."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r["phase"] == "lr_search":
            continue
        key = (r["phase"], r["task"], r["metric"], r.get("n_pairs"), r.get("T"), r["n_latents"], r["model"], r["lr"])
        groups.setdefault(key, []).append(r["value"])
    rows = []
    for (phase, task, metric, n_pairs, length, n_latents, model, lr), values in groups.items():
        rows.append(
            {
                "phase": phase,
                "task": task,
                "metric": metric,
                "n_pairs": n_pairs,
                "T": length,
                "n_latents": n_latents,
                "model": model,
                "lr": lr,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "n_seeds": len(values),
                "values": values,
            }
        )
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| phase | task | metric | pairs | T | L | model | lr | mean ± std | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        digits = 4 if r["metric"] == "seconds_per_step" else 3
        cells = [r["phase"], r["task"], r["metric"], r["n_pairs"], r["T"], r["n_latents"], r["model"], r["lr"]]
        cells = ["" if c is None else str(c) for c in cells]
        cells += [f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}", str(r["n_seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------


def _progress(done: int, total: int, label: str, started: float) -> None:
    width = 30
    filled = width * done // max(1, total)
    elapsed = time.perf_counter() - started
    eta = f", about {elapsed / done * (total - done) / 60:.0f} min left" if done else ""
    bar = "#" * filled + "-" * (width - filled)
    print(f"[{bar}] {done}/{total} {elapsed:6.0f}s{eta}  {label}", flush=True)


def _tuple(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
    return lambda text: tuple(kind(part) for part in text.split(",") if part)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (about a minute on two cores)")
    parser.add_argument("--output", type=Path, default=Path("results/quality"), help="folder of results.json")
    parser.add_argument("--tasks", type=_tuple(str), default=None, help="comma-separated subset of char,recall,needle")
    parser.add_argument("--models", type=_tuple(str), default=None, help="comma-separated subset of the models")
    parser.add_argument("--seeds", type=_tuple(int), default=None, help="comma-separated seeds")
    parser.add_argument("--lr-grid", type=_tuple(float), default=None, help="comma-separated learning rates")
    parser.add_argument("--steps", type=int, default=None, help="the training steps of every task")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes, each running whole tasks (one torch thread each)"
    )
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> Config:
    config = quick() if args.quick else full()
    changes: dict[str, Any] = {}
    for name in ("tasks", "models", "seeds", "lr_grid", "threads"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.steps is not None:
        changes.update(char_steps=args.steps, recall_steps=args.steps, needle_steps=args.steps)
    unknown = set(changes.get("tasks", ())) - set(TASKS) | set(changes.get("models", ())) - set(ATTENTIONS)
    if unknown:
        raise SystemExit(f"unknown tasks or models: {sorted(unknown)}")
    return replace(config, **changes)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    config = configure(args)
    began = time.perf_counter()
    print(f"torch {torch.__version__}, {config.threads} threads, load average {os.getloadavg()}", flush=True)
    if args.workers > 1 and len(set(config.tasks) - {"timing"}) > 1:
        records = run_in_workers(config, args, argv)
    else:
        records = run(config, args.output, progress=_progress)
    rows = summary(records)
    table = format_summary(rows)
    (args.output / "summary.md").write_text(table + "\n", encoding="utf-8")
    (args.output / "report.md").write_text(format_report(records), encoding="utf-8")
    (args.output / "config.json").write_text(json.dumps(asdict(config), indent=1) + "\n", encoding="utf-8")
    print(table)
    if not args.no_plots:
        _plots(records, args.output)
    print(f"wall time {time.perf_counter() - began:.0f}s; results in {args.output / 'results.json'}", flush=True)
    return records


def run_in_workers(config: Config, args: argparse.Namespace, argv: Sequence[str] | None) -> list[dict[str, Any]]:
    """Split the tasks among ``--workers`` processes (this script again, one folder each); gather their records.

    The tasks are dealt in the order recall, needle, char, so that with two workers one runs
    recall and char, the other needle. Each process prints its own progress lines. The
    ``timing`` task runs here afterwards, when the workers no longer load the machine.
    """
    order = [task for task in ("recall", "needle", "char") if task in config.tasks]
    groups = [order[i :: args.workers] for i in range(args.workers) if order[i :: args.workers]]
    passed = list(sys.argv[1:] if argv is None else argv)
    passed = _drop_option(_drop_option(_drop_option(passed, "--workers"), "--tasks"), "--output")
    children = []
    for group in groups:
        folder = args.output / ("part-" + "-".join(group))
        command = [sys.executable, __file__, *passed, "--tasks", ",".join(group), "--output", str(folder), "--no-plots"]
        children.append((folder, subprocess.Popen(command)))
    failed = [folder for folder, child in children if child.wait() != 0]
    if failed:
        raise SystemExit(f"workers failed: {failed}")
    records = [r for folder, _ in children for r in json.loads((folder / "results.json").read_text())]
    if "timing" in config.tasks:
        print("timing the training steps against T", flush=True)
        records += time_steps(config)
    write(args.output, records)
    return records


def _drop_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` or ``name=VALUE``."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


def _plots(records: list[dict[str, Any]], output: Path) -> None:
    try:
        import quality_plots
    except ImportError as error:  # matplotlib missing
        print(f"no plots: {error} (pip install 'latte-ref[plot]')")
        return
    for path in quality_plots.plot_all(records, output):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
