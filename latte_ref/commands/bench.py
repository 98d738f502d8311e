"""``latte-ref bench``: the benchmark suite of ``benchmarks/``, with a progress line, JSON results and PNG plots.

The measurements live in ``benchmarks/suite.py`` of a source checkout (they are not
part of the installed core, and they import torch or jax for their references).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["HELP", "add_arguments", "find_suite", "main", "run"]

HELP = "time and peak memory of every form against T, with GEMM-floor and softmax-attention references (JSON + PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the whole run takes well under a minute")
    parser.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="backends to measure (default: numpy, torch and jax where installed)",
    )
    parser.add_argument("--max-tokens", type=int, metavar="T", help="largest T for NumPy (default 1,048,576)")
    parser.add_argument(
        "--max-tokens-other",
        type=int,
        metavar="T",
        help="largest T for other backends and for the recurrent scan (default 131,072)",
    )
    parser.add_argument("--repeats", type=int, metavar="N", help="timings per point; the minimum is kept")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--output", default="bench-results", metavar="DIR", help="where results.json and the plots go")
    parser.add_argument("--suite", metavar="PATH", help="benchmarks/suite.py to run (default: found from the checkout)")


def find_suite(path: str | None = None) -> ModuleType:
    """Import ``benchmarks/suite.py`` from ``path``, the current directory or the source checkout."""
    candidates = (
        [Path(path)]
        if path
        else [
            Path.cwd() / "benchmarks" / "suite.py",
            Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py",
        ]
    )
    for candidate in candidates:
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location("latte_benchmarks_suite", candidate)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up by name
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError("benchmarks/suite.py not found: run from a source checkout or pass --suite PATH")


def _default_backends() -> list[str]:
    from latte_ref import backends  # type: ignore[attr-defined]

    available = backends.available_backends()
    return [name for name in ("numpy", "torch", "jax") if name in available]


def _progress(done: int, total: int, label: str, started: float) -> None:
    width = 24
    filled = int(width * done / max(total, 1))
    elapsed = time.perf_counter() - started
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:6.1f}s {label[:48]:<48}"
    sys.stderr.write(line)
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    suite = find_suite(args.suite)
    names = args.backends or _default_backends()
    config = suite.Config.quick_config(names) if args.quick else suite.Config(backends=names)
    if args.max_tokens is not None:
        if args.max_tokens < config.max_tokens:
            config.shrink_to(args.max_tokens)
        config.max_tokens = args.max_tokens
    if args.max_tokens_other is not None:
        config.max_tokens_other = args.max_tokens_other
    if args.repeats is not None:
        config.repeats = args.repeats
    config.memory = not args.no_memory

    tasks = list(suite.plan(config))
    rows: list[dict[str, Any]] = []
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    the_machine = suite.machine()
    started = time.perf_counter()
    for i, task in enumerate(tasks):
        _progress(i, len(tasks), task.label, started)
        rows.extend(task.run())
        result = _write(output, suite, config, the_machine, rows, started)  # after every task: a cut run keeps its rows
    _progress(len(tasks), len(tasks), "done", started)
    sys.stderr.write("\n")
    the_machine["load_average_at_end"] = list(os.getloadavg())
    result = _write(output, suite, config, the_machine, rows, started)
    targets = result["targets"]
    if config.quick:
        wall = result["wall_seconds"]
        targets.append(
            {
                "target": "bench --quick wall time (s)",
                "where": "whole run",
                "bound": 45.0,
                "sense": "<=",
                "measured": wall,
                "met": wall <= 45.0,
            }
        )
    print(f"wrote {output / 'results.json'}")
    busy = _busy(the_machine)
    if busy:
        print(f"warning: {busy}; timings are noisy, compare only the ratios of one run")
    for t in targets:
        value = "not measured" if t["measured"] is None else f"{t['measured']:.3g}"
        verdict = {True: "met", False: "NOT met", None: ""}[t["met"]]
        bound = "" if t["bound"] is None else f" (target {t['sense']} {t['bound']})"
        print(f"  {t['target']} [{t['where']}]: {value}{bound} {verdict}")
    try:
        plots = _load_plots(suite)
        for path in plots.plot_all(result, output):
            print(f"wrote {path}")
    except ImportError:
        print("matplotlib is not installed (pip install 'latte-ref[plot]'): no plots")
    return 0


def _busy(machine: dict[str, Any]) -> str | None:
    """A sentence when the 1-minute load average, at the start or the end of the run, says others used the cores."""
    cores = machine.get("logical_cores") or 1
    loads = [machine["load_average_at_start"][0], machine["load_average_at_end"][0]]
    # The benchmark itself keeps up to all cores busy, so only a load beyond them says someone else was there.
    if max(loads) > 1.25 * cores:
        return f"the machine was busy (load average {max(loads):.1f} on {cores} cores)"
    return None


def _write(
    output: Path, suite: ModuleType, config: Any, machine: dict[str, Any], rows: list[dict[str, Any]], started: float
) -> dict[str, Any]:
    result = {
        "machine": machine,
        "config": vars(config),
        "rows": rows,
        "targets": suite.summarise_targets(rows, config),
        "wall_seconds": time.perf_counter() - started,
    }
    (output / "results.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _load_plots(suite: ModuleType) -> ModuleType:
    path = Path(str(suite.__file__)).with_name("plots.py")
    spec = importlib.util.spec_from_file_location("latte_benchmarks_plots", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/suite.py [options]``: the same as ``latte-ref bench``."""
    parser = argparse.ArgumentParser(prog="latte-ref bench", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
