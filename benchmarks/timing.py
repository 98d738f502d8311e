"""How the benchmark suite times: interleaved repeats, quiet neighbours, and when a verdict can be trusted.

A ratio of two timings says something only when both were taken under the same
conditions. So the functions a target compares are timed together, round by round
(each round calls every one of them once, in a rotating order), and each keeps the
minimum of its rounds after a discarded warm-up. The rounds of a measurement a target
compares are spread over ``SPREAD_SECONDS`` (see there), shared between the passes the
suite takes it in: the machine's own speed changes from one moment to the next, and a
minimum taken over a few milliseconds says which moment it was. While one library runs, the thread
pools of the others (OpenBLAS of NumPy, the OpenMP of PyTorch, ...) are held to one
thread through threadpoolctl, so that their idle spinning does not take the cores.
The CPU time the whole machine spent during the run, less the run's own, says whether
someone else was using the machine (the 1-minute load average, recorded too, is the
fallback where the kernel does not tell): then no target is called met or missed.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "BUSY_LOAD_PER_CORE",
    "MIN_REPEATS",
    "SPREAD_SECONDS",
    "best_time",
    "busy",
    "busy_by_others",
    "cpu_counters",
    "fastest_rows",
    "interleaved_times",
    "numpy_peak_bytes",
    "others_cores",
    "quiet_others",
    "thread_pools",
]

MIN_REPEATS = 5
"""Timed rounds per measurement by default (after the warm-up); ``--repeats`` may ask for fewer, for smoke runs."""

BUSY_LOAD_PER_CORE = 0.5
"""Load beyond the run's own, per logical core, from which a run's verdicts are "unreliable: machine busy".

Before the run the whole 1-minute load average is someone else's. After it, the run itself
accounts for up to 1 per core (the libraries use every core), so the bound there is 1 + this.
"""

SPREAD_SECONDS = 1.0
"""The wall time over which the rounds of a measurement that a target compares are spread.

On the 2-core machine (a virtual machine) the same call runs at one of two speeds, switching
every few milliseconds to seconds while nothing else runs: a 16-element ``np.add`` took
380 to 420 ns or 600 to 800 ns in consecutive 2.5 ms samples of one process. Work bound by
Python and dispatch slows most (Latte's ``step``, 28 against 33 to 51 us), work bound by
memory least, so the ratio of the two moves with the moment it was taken. Timed in eight
processes, one query's product with 8,192 cached keys (4 heads of 32) / Latte's step read 3.7
to 5.8 over 5 rounds of 20 calls each (about 20 ms), and 5.1 to 5.6 in seven of them (4.3 in
the eighth) over rounds spread across a second.
"""

SLOW_CALL_SECONDS = 20.0
"""A warm-up call this long is its own measurement: repeating it would cost minutes."""


def interleaved_times(
    functions: dict[str, tuple[Any, Callable[[], Any]]], repeats: int, calls: int = 1, spread: float = 0.0
) -> dict[str, float]:
    """The minimum wall time of each function over interleaved rounds, after one warm-up call each.

    ``functions`` maps a name to ``(backend, fn)``: ``backend.synchronize`` waits for the
    result, and the other libraries' thread pools are quiet while ``fn`` runs. Round r calls
    the functions in the order rotated by r, so none is always first after another's work.
    There are ``repeats`` rounds, and more until the rounds have taken ``spread`` seconds
    (see ``SPREAD_SECONDS``). With ``calls`` > 1 a round times that many calls in a row and
    keeps their mean: for functions of microseconds, whose first call after the thread pools
    were resized (by another library's turn) pays for waking the threads.
    """
    names = list(functions)
    best = dict.fromkeys(names, math.inf)
    for name in names:  # the warm-up: compilation, first-touch page faults, caches
        seconds = _timed(*functions[name])
        if seconds > SLOW_CALL_SECONDS:
            best[name] = seconds
    rounds = [name for name in names if best[name] == math.inf]
    started, r = time.perf_counter(), 0
    while rounds and (r < max(repeats, 1) or time.perf_counter() - started < spread):
        for i in range(len(rounds)):
            name = rounds[(i + r) % len(rounds)]
            best[name] = min(best[name], _timed(*functions[name], calls=calls))
        r += 1
    return best


TIMES = ("seconds", "numpy_causal_layer_seconds", "jax_scan_seconds", "jax_causal_layer_jit_seconds")
"""The fields of a row that are one function's time (a first call's compile time is not: it is paid once)."""


IDENTITY = ("kind", "backend", "form", "method", "context", "T", "causal", "packed", "chunk_size", "n_cached")
"""The fields that say what a row measured: rows of two passes pair up when these agree."""


def fastest_rows(first: list[dict[str, Any]], later: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of one measurement, so far (``first``) and from one more pass: each time the faster, the rest as so far.

    A row's times (``TIMES``) are each function's own minimum, so a function keeps its fastest
    pass, as within a pass it keeps its fastest round; a ratio may then divide the minima of
    two passes, as it divides those of two rounds. Rows that do not pair up (a pass that
    measured something else) leave the rows so far as they were.
    """
    same = len(first) == len(later) and all(a.get(key) == b.get(key) for a, b in zip(first, later) for key in IDENTITY)
    if not same:
        return first
    return [{**a, **{key: min(a[key], b[key]) for key in TIMES if key in a and key in b}} for a, b in zip(first, later)]


def best_time(fn: Callable[[], Any], backend: Any, repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls of ``fn`` alone, after one discarded warm-up call."""
    return interleaved_times({"fn": (backend, fn)}, repeats)["fn"]


def _timed(backend: Any, fn: Callable[[], Any], calls: int = 1) -> float:
    with quiet_others(backend.name):
        start = time.perf_counter()
        for _ in range(calls):
            backend.synchronize(fn())
        return (time.perf_counter() - start) / calls


# The folder in a shared library's path that says which Python package shipped it.
_OWNERS = {"numpy": ("numpy",), "torch": ("torch",), "jax": ("jax", "jaxlib"), "cupy": ("cupy",), "dask": ("numpy",)}


def _owned_by(filepath: str, library: str) -> bool:
    parts = os.path.normpath(filepath).split(os.sep)
    packages = _OWNERS.get(library, (library,))
    return any(part == p or part == f"{p}.libs" or part.startswith(f"{p}_") for part in parts for p in packages)


@contextlib.contextmanager
def quiet_others(library: str) -> Iterator[None]:
    """Hold every thread pool not shipped with ``library`` to one thread (nothing without threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        yield
        return
    controller = ThreadpoolController()
    others = [c.filepath for c in controller.lib_controllers if not _owned_by(c.filepath, library)]
    if not others:
        yield
        return
    with controller.select(filepath=others).limit(limits=1):
        yield


def thread_pools() -> list[dict[str, Any]]:
    """The native thread pools loaded in this process, for the record (empty without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "num_threads", "version")
    return [
        {**{k: pool.get(k) for k in keys}, "file": os.path.basename(pool["filepath"])} for pool in threadpool_info()
    ]


def cpu_counters() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its children) since boot.

    Read from ``/proc/stat`` (Linux): user, nice, system, irq, softirq and steal time. None where
    there is no such file. The difference of two readings, less this process's share, is the
    CPU time others took meanwhile: unlike the load average, it forgets a run that ended before.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = sum(getattr(os.times(), name) for name in ("user", "system", "children_user", "children_system"))
    return machine, own


def others_cores(before: tuple[float, float], after: tuple[float, float], wall_seconds: float) -> float:
    """The cores that other processes kept busy on average between two :func:`cpu_counters` readings."""
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(others, 0.0) / max(wall_seconds, 1e-9)


def busy_by_others(cores_used: float, cores: int) -> str | None:
    """``"unreliable: machine busy (...)"`` when others used more than ``BUSY_LOAD_PER_CORE`` of each core."""
    cores = max(cores, 1)
    if cores_used / cores > BUSY_LOAD_PER_CORE:
        return f"unreliable: machine busy (other processes used {cores_used:.2f} of {cores} cores during the run)"
    return None


def busy(load_before: float, load_after: float, cores: int) -> str | None:
    """``"unreliable: machine busy (...)"`` when the 1-minute load says others used the cores; else None."""
    cores = max(cores, 1)
    before, after = load_before / cores, load_after / cores
    if before > BUSY_LOAD_PER_CORE or after > 1 + BUSY_LOAD_PER_CORE:
        return (
            f"unreliable: machine busy (load average {load_before:.1f} before, {load_after:.1f} after, {cores} cores)"
        )
    return None


def numpy_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes NumPy allocated during ``fn()`` beyond what was live before (inputs excluded).

    NumPy reports its buffers to :mod:`tracemalloc`, so this is exact for NumPy arrays.
    """
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak - base


# glibc's mallopt parameters: the size from which a block is mapped afresh, and the free memory kept.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def steady_allocator() -> str | None:
    """Fix glibc's allocation thresholds for the run; what was set, or None where this is not glibc.

    By default glibc moves the size from which it maps a block afresh (and so faults its pages in
    on first touch) as the process frees memory, so the same NumPy call costs a page fault per
    temporary in one process and none in the next. Measured on NumPy causal at T = 2,048, five
    processes each: causal / bidirectional 1.42 to 2.64 by default, 1.60 to 1.85 with the
    thresholds fixed. Temporaries up to 32 MiB then come from the heap, which keeps 256 MiB.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    if not (mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 256 << 20)):
        return None
    return "glibc: mmap threshold 32 MiB, trim threshold 256 MiB"
