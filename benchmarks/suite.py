"""Latte benchmark suite: time and peak memory of every form against T, with references measured in the same run.

A plain script, also run by ``latte-ref bench`` (which passes its options through)::

    python benchmarks/suite.py --quick

It prints a progress line, writes ``results.json`` after every measurement (so a run cut
short keeps what it measured), prints every target as met or missed, and draws PNG plots
when matplotlib is installed. The measurements are in ``measurements.py``, the targets in
``targets.py`` and the plots in ``plots.py``, beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from compiled import decode_step_rows, jax_form_rows, jax_peer_rows, torch_compile_rows
from hf_rows import generation_rows
from measurements import form_row, machine, peer_rows, scan_rows, sizes, softmax_bytes, step_rows
from points import chunk_rows, mark_below_floor, point_rows
from targets import summarise_targets, verdict
from timing import (
    MIN_REPEATS,
    SPREAD_SECONDS,
    busy_by_others,
    cpu_counters,
    fastest_rows,
    others_cores,
    steady_allocator,
    thread_pools,
)
from timing import busy as machine_busy

from latte_ref import backends

__all__ = ["Config", "Task", "main", "plan"]

QUICK_WALL_SECONDS = 45.0
"""How long ``--quick`` may take, its own target (on an idle machine)."""

EVERY_RUN_PASSES = 3
"""Passes of the jitted forms and the decode step in every run, full runs too: a pass costs a second or two."""

HELP = "time and peak memory of every form against T, with GEMM-floor and softmax-attention references (JSON + PNG)"


@dataclass
class Config:
    """What to measure. ``quick`` shrinks every sweep so the whole run takes well under a minute."""

    backends: list[str]
    max_tokens: int = 1 << 20
    max_tokens_other: int = 1 << 17  # for backends other than NumPy, and for the recurrent scan
    repeats: int = MIN_REPEATS
    spread: float = SPREAD_SECONDS  # seconds over which the rounds of each measurement a target compares are spread
    softmax_budget_bytes: int = 6 << 30  # skip standard attention beyond this estimated memory
    chunk_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    target_tokens: int = 16_384
    scaling_tokens: tuple[int, int] = (16_384, 131_072)
    step_contexts: tuple[int, ...] = (1024, 8192, 65_536, 1 << 20)
    peer_tokens: tuple[int, ...] = (4096, 16_384)
    recurrent_max_tokens_other: int = 16_384  # the scan pays the framework's dispatch per step off NumPy
    max_tokens_jax: int = 1 << 17  # eager JAX compiles every operation anew for each shape
    peer_unroll: int = 100  # the authors' setting; compiling it takes about half a minute
    packed_documents: int = 64  # documents of random lengths packed in one row of target_tokens
    memory: bool = True
    quick: bool = False
    # Eager JAX's forms, steps and scans, which no target reads: their first calls compile (causal's at
    # T = 1,024 2.4 s, each block one graph; the recurrence and the step every operation apart).
    eager_jax: bool = True
    compiled: bool = False  # torch.compile rows: minutes of compiling
    generation: tuple[int, ...] = ()  # prompt lengths of the Hugging Face generation rows (none by default)

    @property
    def target_repeats(self) -> int:
        """Rounds at the targets' T: a quick run's calls there take milliseconds, and with 5 rounds the
        GEMM floor's minimum came out at 0.41 to 0.91 ms from run to run (see ``target_passes``)."""
        return max(self.repeats, 10) if self.quick else self.repeats

    @property
    def target_passes(self) -> int:
        """Passes over the measurements the targets compare (see ``Task.passes``); a quick run's take seconds."""
        return 3 if self.quick else 1

    @classmethod
    def quick_config(cls, backends: list[str]) -> Config:
        return cls(
            backends=backends,
            max_tokens=2048,
            max_tokens_other=2048,
            recurrent_max_tokens_other=0,
            peer_unroll=4,
            eager_jax=False,
            softmax_budget_bytes=64 << 20,
            chunk_sizes=(16, 32, 64),
            target_tokens=2048,
            scaling_tokens=(1024, 2048),
            step_contexts=(1024, 8192),
            peer_tokens=(1024,),
            quick=True,
        )

    def shrink_to(self, max_tokens: int) -> None:
        """Keep every measured size at or below ``max_tokens`` (for smoke tests of the suite itself)."""
        self.max_tokens = min(self.max_tokens, max_tokens)
        self.max_tokens_other = min(self.max_tokens_other, max_tokens)
        self.target_tokens = min(self.target_tokens, max_tokens)
        self.scaling_tokens = (min(self.scaling_tokens[0], max_tokens // 2), min(self.scaling_tokens[1], max_tokens))
        self.step_contexts = tuple(sorted({min(c, max_tokens) for c in self.step_contexts}))
        self.peer_tokens = tuple(sorted({min(c, max_tokens) for c in self.peer_tokens}))


@dataclass
class Task:
    """One measurement; ``run()`` returns the row(s) to record."""

    label: str
    run: Callable[[], list[dict[str, Any]]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    again: Callable[[], list[dict[str, Any]]] | None = None
    """What the passes after the first run instead of ``run``: the same times, less what need not be measured
    again (peak memory); None runs ``run`` again."""
    passes: int = 1
    """How many times the run takes this measurement, once in each of its passes over the plan.

    Each function keeps its fastest pass (``timing.fastest_rows``), on inputs allocated afresh for
    it. Two things change a timing for many rounds at a time. BLAS products run in one of two
    modes by how their arrays were placed: the GEMM floor and the bidirectional form at T = 2,048
    took 0.40 to 0.43 ms and 2.0 to 2.1 ms or 0.69 to 0.83 ms and 3.1 to 3.3 ms, while causal
    stayed at 4.8 to 5.7 ms, so one placement's ratio to the floor moved by a factor of two. And
    the machine's speed changes for seconds: with each measurement taken in one place (three
    sets of inputs back to back, rounds spread over a second), the NumPy step took 27 to 30 us in
    ten quick runs and 42 to 43 us throughout in two. Later passes come after the whole plan,
    seconds apart.
    """


# -- the plan -----------------------------------------------------------------------------------


def plan(config: Config) -> Iterator[Task]:
    """Every measurement of the run, in order (cheap first, so a partial run is still useful)."""
    passes = config.target_passes
    spread = config.spread / passes  # each pass's share of a compared measurement's rounds
    for name in config.backends:
        if name == "jax" and not config.eager_jax:
            continue  # JAX is still timed under jax.jit below
        backend = backends.get_backend(name)
        upto = config.max_tokens if name == "numpy" else config.max_tokens_other
        if name == "jax":
            upto = min(upto, config.max_tokens_jax)
        # The targets' packed rows are timed with the floor and softmax of their T (eager JAX takes the
        # per-token form for them: its packed row would say nothing new).
        packed = config.packed_documents if name != "jax" else None
        points = sizes(upto)
        for n_tokens in points:
            softmax = tuple(c for c in (False, True) if softmax_bytes(name, n_tokens) <= config.softmax_budget_bytes)
            at_target = n_tokens == config.target_tokens
            # The T of the targets (the quarter's: standard attention against Latte on PyTorch). No target
            # reads eager JAX's forms.
            quarter = max(config.target_tokens // 4, 1024)
            compared = name != "jax" and n_tokens in (config.target_tokens, quarter)
            measure = partial(
                point_rows,
                backend,
                n_tokens,
                config.target_repeats if compared else config.repeats,
                softmax=softmax,
                packed=packed if at_target else None,
                memory=config.memory,
                spread=spread if compared else 0.0,
            )
            yield Task(
                f"{name} floor, forms{', packed' if at_target and packed else ''}, softmax T={n_tokens}",
                measure,
                again=partial(measure, memory=False),
                passes=passes if compared else 1,
            )
            # The scan is a Python loop of steps: on other backends each step pays the framework's dispatch.
            recurrent_upto = config.max_tokens_other if name == "numpy" else config.recurrent_max_tokens_other
            if n_tokens <= recurrent_upto:
                yield Task(
                    f"{name} recurrent T={n_tokens}",
                    partial(form_row, backend, "recurrent", n_tokens, config.repeats, memory=config.memory),
                )
        if packed and config.target_tokens not in points:
            yield Task(
                f"{name} floor, packed T={config.target_tokens}",
                partial(point_rows, backend, config.target_tokens, config.repeats, softmax=(), packed=packed),
            )
        if name == "numpy":
            yield Task(
                f"numpy causal chunk_size={','.join(map(str, config.chunk_sizes))}",
                partial(chunk_rows, backend, config.target_tokens, config.chunk_sizes, config.repeats),
            )
        compared = name == "numpy"  # only NumPy's steps are compared by a target
        yield Task(
            f"{name} step contexts={','.join(map(str, config.step_contexts))}",
            partial(step_rows, backend, config.step_contexts, config.repeats, spread if compared else 0.0),
            passes=passes if compared else 1,
        )
        yield Task(
            f"{name} state scans T={config.target_tokens}",
            partial(scan_rows, backend, config.target_tokens, config.repeats),
        )
    if "numpy" in config.backends and backends.get_backend("jax").unavailable_reason() is None:
        for n_tokens in config.peer_tokens:
            yield Task(
                f"authors' scan (jax) vs numpy layer T={n_tokens}",
                partial(peer_rows, n_tokens, config.repeats, config.peer_unroll, spread),
                passes=passes,
            )
    if "jax" in config.backends:
        for n_tokens in config.peer_tokens:
            yield Task(
                f"jax jit causal layer vs authors' scan T={n_tokens}",
                partial(jax_peer_rows, n_tokens, config.repeats, config.peer_unroll, spread),
                passes=passes,
            )
        yield Task(
            f"jax jit causal, bidirectional T={config.target_tokens}",
            partial(jax_form_rows, config.target_tokens, config.repeats, config.spread / EVERY_RUN_PASSES),
            passes=EVERY_RUN_PASSES,
        )
    if "torch" in config.backends:
        yield Task(
            "decode step against SDPA",
            partial(decode_step_rows, tuple(config.backends), config.repeats, spread=config.spread / EVERY_RUN_PASSES),
            passes=EVERY_RUN_PASSES,
        )
    if config.compiled and "torch" in config.backends:
        lengths = (config.target_tokens // 8, config.target_tokens // 4)
        yield Task(f"torch.compile causal layer T={lengths}", partial(torch_compile_rows, lengths, config.repeats))
    if config.generation:
        yield Task(f"HF Llama generation, prompts {config.generation}", partial(generation_rows, config.generation, 3))


# -- the run ------------------------------------------------------------------------------------


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
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help=f"interleaved timings per point after a warm-up; the minimum is kept (default {MIN_REPEATS})",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument(
        "--compiled", action="store_true", help="also time the causal torch layer under torch.compile (minutes)"
    )
    parser.add_argument(
        "--generation",
        nargs="*",
        type=int,
        metavar="PROMPT",
        help="also time generation in a small Hugging Face Llama, SDPA against Latte, at these prompt lengths"
        " (default 1024 4096 16384 65536; minutes)",
    )
    parser.add_argument("--output", default="bench-results", metavar="DIR", help="where results.json and the plots go")


def configure(args: argparse.Namespace) -> Config:
    names = args.backends or [name for name in ("numpy", "torch", "jax") if name in backends.available_backends()]
    config = Config.quick_config(names) if args.quick else Config(backends=names)
    if args.max_tokens is not None:
        if args.max_tokens < config.max_tokens:
            config.shrink_to(args.max_tokens)
        config.max_tokens = args.max_tokens
    if args.max_tokens_other is not None:
        config.max_tokens_other = args.max_tokens_other
    if args.repeats is not None:
        config.repeats = args.repeats
    config.memory = not args.no_memory
    config.compiled = args.compiled
    if args.generation is not None:
        config.generation = tuple(args.generation) or (1024, 4096, 16_384, 65_536)
    return config


def run(config: Config, output: Path, progress: Callable[[int, int, str, float], None] | None = None) -> dict[str, Any]:
    """Every task of the plan, writing ``results.json`` after each; the final result, targets and verdicts included."""
    tasks = list(plan(config))
    rows: list[dict[str, Any]] = []
    output.mkdir(parents=True, exist_ok=True)
    the_machine = machine()
    the_machine["allocator"] = steady_allocator()
    counters_at_start = cpu_counters()
    started = time.perf_counter()
    # Pass 1 takes every measurement; pass p > 1 takes again those of the tasks with p passes or more.
    passes = max((t.passes for t in tasks), default=1)
    schedule = [(p, task) for p in range(1, passes + 1) for task in tasks if task.passes >= p]
    for i, (p, task) in enumerate(schedule):
        if progress:
            progress(i, len(schedule), task.label + (f" (pass {p})" if p > 1 else ""), started)
        task.rows = task.run() if p == 1 else mark_below_floor(fastest_rows(task.rows, (task.again or task.run)()))
        rows = [row for t in tasks for row in t.rows]
        _write(output, config, the_machine, rows, started)  # after every task: a cut run keeps its rows
    if progress:
        progress(len(schedule), len(schedule), "done", started)
    the_machine["load_average_at_end"] = list(os.getloadavg())
    counters_at_end = cpu_counters()
    if counters_at_start is not None and counters_at_end is not None:
        wall = time.perf_counter() - started
        the_machine["other_processes_cores"] = others_cores(counters_at_start, counters_at_end, wall)
    the_machine["thread_pools"] = thread_pools()  # the frameworks the run imported have theirs by now
    reason = busy(the_machine)
    the_machine["busy"] = reason
    result = _write(output, config, the_machine, rows, started, reason)
    if config.quick:
        wall = result["wall_seconds"]
        met = wall <= QUICK_WALL_SECONDS
        result["targets"].append(
            {
                "target": "bench --quick wall time (s)",
                "where": "whole run",
                "bound": QUICK_WALL_SECONDS,
                "sense": "<=",
                "measured": wall,
                "met": None if reason else met,
                "verdict": verdict(met, None, reason),
            }
        )
        (output / "results.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def busy(the_machine: dict[str, Any]) -> str | None:
    """``"unreliable: machine busy (...)"`` when other processes took the cores during the run.

    Measured as the machine's CPU time less the run's own (``/proc/stat``); where the kernel does
    not give it, the 1-minute load average before and after the run stands in. The threshold is
    ``timing.BUSY_LOAD_PER_CORE`` of each core.
    """
    cores = the_machine.get("logical_cores") or 1
    if "other_processes_cores" in the_machine:
        return busy_by_others(the_machine["other_processes_cores"], cores)
    return machine_busy(the_machine["load_average_at_start"][0], the_machine["load_average_at_end"][0], cores)


def _write(
    output: Path,
    config: Config,
    the_machine: dict[str, Any],
    rows: list[dict[str, Any]],
    started: float,
    reason: str | None = None,
) -> dict[str, Any]:
    result = {
        "machine": the_machine,
        "config": vars(config),
        "rows": rows,
        "targets": summarise_targets(rows, config, reason),
        "wall_seconds": time.perf_counter() - started,
    }
    (output / "results.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _progress(done: int, total: int, label: str, started: float) -> None:
    width = 24
    filled = int(width * done / max(total, 1))
    elapsed = time.perf_counter() - started
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:6.1f}s {label[:48]:<48}")
    sys.stderr.flush()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    output = Path(args.output)
    result = run(configure(args), output, progress=_progress)
    sys.stderr.write("\n")
    print(f"wrote {output / 'results.json'}")
    reason = result["machine"]["busy"]
    if reason:
        print(f"warning: {reason}: no target is called met or missed; rerun on an idle machine")
    below = [r for r in result["rows"] if r.get("below_floor")]
    for r in below:
        print(
            f"warning: {r['backend']} {r['form']}{' packed' if 'packed' in r else ''} T={r['T']} measured faster than"
            " its GEMM floor (after a re-measure), which no form can be: its targets are unreliable"
        )
    for t in result["targets"]:
        value = "not measured" if t["measured"] is None else f"{t['measured']:.3g}"
        bound = "" if t["bound"] is None else f" (target {t['sense']} {t['bound']})"
        said = "" if t["verdict"] == "not measured" else f" {t['verdict']}"
        print(f"  {t['target']} [{t['where']}]: {value}{bound}{said}")
    try:
        import plots
    except ImportError:
        print("matplotlib is not installed (pip install 'latte-ref[plot]'): no plots")
        return 0
    for path in plots.plot_all(result, output):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog=os.environ.get("LATTE_REF_BENCH_PROG")))
