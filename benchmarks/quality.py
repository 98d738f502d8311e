"""Latte against softmax attention, linear attentions and other baselines, trained on small CPU tasks.

Eight models, identical except for their attention (``benchmarks/quality_models.py``,
``benchmarks/quality_mixers.py``): ``softmax``, ``latte``, ``linear`` (elu + 1), ``taylor``
(Based's second-order Taylor map), ``window`` (sliding-window softmax), ``hybrid`` (sliding
window + Latte over the older tokens), ``retnet`` (fixed decay) and ``abc`` (Latte's write, a
content-based read). Each is trained with AdamW, the same schedule and the same number of
steps, on five tasks (``benchmarks/quality_tasks.py``, ``benchmarks/quality_settings.py``):

- ``char``: byte-level language modelling on the Python standard library's sources; held-out nats per byte;
- ``recall``: the easy associative recall of the first comparison (one token per pair);
- ``mqar``: multi-query associative recall in Zoology's format, with and without a short convolution,
  and a sweep of every model's state size;
- ``copy``: selective copying;
- ``needle``: a token hidden among blanks must be named at the end; accuracy against T;
- ``timing``: seconds per training step against T at a fixed number of tokens per step (no training).

Each model's learning rate is chosen per task from the grid on the first seed, at the task's
hardest setting, by a validation set that is not the one reported (ties by validation loss);
then every setting and seed trains with it (``benchmarks/quality_plan.py``).

    python benchmarks/quality.py --quick --output results/quality-quick   # a few minutes: every task, tiny budgets
    python benchmarks/quality.py --workers 2 --output results/quality     # the full run

``DIR/results.json`` is a list of records (``phase``, ``task``, ``model``, ``conv``, ``size``,
``seed``, ``metric``, ``value``, ``lr``, ``validation``, ``validation_loss``, ``state_per_layer``,
the setting, ...); it is rewritten after every training run. With matplotlib, PNG plots too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_models import ATTENTIONS
from quality_plan import run, time_steps, write
from quality_report import format_report
from quality_settings import TASKS, Config, full, quick

__all__ = ["configure", "main", "parse", "summary"]


# -- summary -------------------------------------------------------------------------------------


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every (phase, task, metric, setting, model) but the lr search."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r["phase"] == "lr_search":
            continue
        model = r["model"] + ("+conv" if r.get("conv") else "")
        key = (
            r["phase"],
            r["task"],
            r["metric"],
            r.get("n_pairs") or r.get("n_tokens"),
            r.get("T"),
            r.get("size"),
            model,
            r["lr"],
        )
        groups.setdefault(key, []).append(r["value"])
    rows = []
    for (phase, task, metric, count, length, size, model, lr), values in groups.items():
        rows.append(
            {
                "phase": phase,
                "task": task,
                "metric": metric,
                "count": count,
                "T": length,
                "size": size,
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
        "| phase | task | metric | pairs or tokens | T | size | model | lr | mean ± std | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        digits = 4 if r["metric"].startswith("seconds_per_step") else 3
        cells = [r["phase"], r["task"], r["metric"], r["count"], r["T"], r["size"], r["model"], r["lr"]]
        cells = ["" if c is None else str(c) for c in cells]
        spread = f"± {r['std']:.{digits}f}" if r["n_seeds"] > 1 else "(n=1)"
        cells += [f"{r['mean']:.{digits}f} {spread}", str(r["n_seeds"])]
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
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a few minutes on two cores)")
    parser.add_argument("--output", type=Path, default=Path("results/quality"), help="folder of results.json")
    parser.add_argument("--tasks", type=_tuple(str), default=None, help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--models", type=_tuple(str), default=None, help="comma-separated subset of the models")
    parser.add_argument("--seeds", type=_tuple(int), default=None, help="comma-separated seeds")
    parser.add_argument("--lr-grid", type=_tuple(float), default=None, help="comma-separated learning rates")
    parser.add_argument("--steps", type=int, default=None, help="the training steps of every task")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: 1)")
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
        for task in ("char", "recall", "mqar", "copy", "needle"):
            changes[f"{task}_steps"] = args.steps
    unknown = set(changes.get("tasks", ())) - set(TASKS) | set(changes.get("models", ())) - set(ATTENTIONS)
    if unknown:
        raise SystemExit(f"unknown tasks or models: {sorted(unknown)}")
    return replace(config, **changes)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    config = configure(args)
    began = time.perf_counter()
    print(f"torch {torch.__version__}, {config.threads} threads, load average {os.getloadavg()}", flush=True)
    if args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}")
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

    The tasks are dealt in the order mqar, char, needle, copy, recall (the costliest first).
    Each process prints its own progress lines. The
    ``timing`` task runs here afterwards, when the workers no longer load the machine.
    """
    order = [task for task in ("mqar", "char", "needle", "copy", "recall") if task in config.tasks]
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
