"""Latte benchmark suite: time and peak memory of every form against T, with references measured in the same run.

Run through ``latte-ref bench`` (which adds the progress line, the JSON file and the plots), or directly::

    python benchmarks/suite.py --quick

Every figure the targets need is a ratio of two timings taken in this one process,
each the minimum of several repeats: the machines these run on are shared and noisy.
Framework-specific references (``torch.nn.functional.scaled_dot_product_attention``,
``jax.nn.dot_product_attention``) live here, not in the ``latte_ref`` core.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

import latte_ref
from latte_ref import backends  # type: ignore[attr-defined]
from latte_ref.state import summarise

__all__ = ["Config", "Task", "machine", "plan", "summarise_targets"]

H, L, D = 4, 32, 32
"""Heads, latents per head and value dimension per head of every benchmark (the issue's setting)."""


@dataclass
class Config:
    """What to measure. ``quick`` shrinks every sweep so the whole run takes well under a minute."""

    backends: list[str]
    max_tokens: int = 1 << 20
    max_tokens_other: int = 1 << 17  # for backends other than NumPy, and for the recurrent scan
    repeats: int = 3
    softmax_budget_bytes: int = 6 << 30  # skip standard attention beyond this estimated memory
    chunk_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    target_tokens: int = 16_384
    scaling_tokens: tuple[int, int] = (16_384, 131_072)
    step_contexts: tuple[int, ...] = (1024, 8192, 65_536, 1 << 20)
    memory: bool = True
    quick: bool = False

    @classmethod
    def quick_config(cls, backends: list[str]) -> Config:
        return cls(
            backends=backends,
            max_tokens=4096,
            max_tokens_other=2048,
            repeats=2,
            softmax_budget_bytes=64 << 20,
            chunk_sizes=(16, 32, 64),
            target_tokens=2048,
            scaling_tokens=(1024, 2048),
            step_contexts=(1024, 8192),
            quick=True,
        )

    def shrink_to(self, max_tokens: int) -> None:
        """Keep every measured size at or below ``max_tokens`` (for smoke tests of the suite itself)."""
        self.max_tokens = min(self.max_tokens, max_tokens)
        self.max_tokens_other = min(self.max_tokens_other, max_tokens)
        self.target_tokens = min(self.target_tokens, max_tokens)
        self.scaling_tokens = (min(self.scaling_tokens[0], max_tokens // 2), min(self.scaling_tokens[1], max_tokens))
        self.step_contexts = tuple(sorted({min(c, max_tokens) for c in self.step_contexts}))


@dataclass
class Task:
    """One measurement; ``run()`` returns the row(s) to record."""

    label: str
    run: Callable[[], list[dict[str, Any]]]
    rows: list[dict[str, Any]] = field(default_factory=list)


# -- machine ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, memory, load, library versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": list(os.getloadavg()),
        "versions": {"latte_ref": latte_ref.__version__, "numpy": np.__version__},
    }
    for name in ("torch", "jax"):  # versions of the frameworks this run imported
        if name in sys.modules:
            info["versions"][name] = sys.modules[name].__version__
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- inputs and timing --------------------------------------------------------------------------


def random_inputs(n_tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k (T, H, L) and v (T, H, D) in float32, B = 1 (no batch axis)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_tokens, H, L), dtype=np.float32)
    k = rng.standard_normal((n_tokens, H, L), dtype=np.float32)
    v = rng.standard_normal((n_tokens, H, D), dtype=np.float32)
    return q, k, v


def best_time(fn: Callable[[], Any], backend: backends.Backend, repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls (after one warm-up call when the call is short)."""
    start = time.perf_counter()
    backend.synchronize(fn())
    first = time.perf_counter() - start
    if first > 20 or repeats <= 1:  # a long call is its own warm-up; repeating it costs minutes
        return first
    best = first
    for _ in range(repeats):
        start = time.perf_counter()
        backend.synchronize(fn())
        best = min(best, time.perf_counter() - start)
    return best


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


def sizes(upto: int, start: int = 1024) -> list[int]:
    out, n = [], start
    while n <= upto:
        out.append(n)
        n *= 2
    return out


# -- the forms ----------------------------------------------------------------------------------


FORMS: dict[str, Callable[..., Any]] = {
    "bidirectional": lambda q, k, v: latte_ref.bidirectional(q, k, v),
    "causal": lambda q, k, v: latte_ref.causal(q, k, v),
    "recurrent": lambda q, k, v: latte_ref.recurrent(q, k, v),
}


def form_row(backend: backends.Backend, form: str, n_tokens: int, repeats: int, *, memory: bool, **extra: Any):
    q, k, v = random_inputs(n_tokens)
    xq, xk, xv = (backend.asarray(a, dtype="float32") for a in (q, k, v))
    fn = FORMS[form]
    if "chunk_size" in extra:
        fn = partial(latte_ref.causal, chunk_size=extra["chunk_size"])
    row: dict[str, Any] = {"kind": "form", "backend": backend.name, "form": form, "T": n_tokens, **extra}
    row["seconds"] = best_time(lambda: fn(xq, xk, xv), backend, repeats)
    row["input_bytes"] = int(q.nbytes + k.nbytes + v.nbytes)
    if memory and backend.name == "numpy" and form != "recurrent":  # the scan holds one output, as causal does
        row["peak_bytes_excluding_inputs"] = numpy_peak_bytes(lambda: fn(xq, xk, xv))
        row["peak_bytes_including_inputs"] = row["peak_bytes_excluding_inputs"] + row["input_bytes"]
        row["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return [row]


# -- references ---------------------------------------------------------------------------------


def gemm_floor_row(backend: backends.Backend, n_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """The two products every Latte evaluation needs, alone: S = k^T v (L x T @ T x D) and p S (T x L @ L x D)."""
    q, k, v = random_inputs(n_tokens)
    xp = backend.namespace()
    k_hlt = backend.asarray(np.ascontiguousarray(k.transpose(1, 2, 0)), dtype="float32")  # [H, L, T]
    v_htd = backend.asarray(np.ascontiguousarray(v.transpose(1, 0, 2)), dtype="float32")  # [H, T, D]
    p_htl = backend.asarray(np.ascontiguousarray(q.transpose(1, 0, 2)), dtype="float32")  # [H, T, L]

    def floor() -> Any:
        return xp.matmul(p_htl, xp.matmul(k_hlt, v_htd))

    seconds = best_time(floor, backend, repeats)
    return [{"kind": "floor", "backend": backend.name, "T": n_tokens, "seconds": seconds}]


def softmax_attention(backend_name: str, is_causal: bool) -> Callable[[Any, Any, Any], Any] | None:
    """Standard softmax attention in the backend's own idiom; q, k, v are (T, H, D)."""
    if backend_name == "numpy":

        def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            n_tokens = q.shape[0]
            out = np.empty_like(v)
            hidden = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), 1) if is_causal else None
            for h in range(q.shape[1]):  # one head at a time: a T x T score matrix per head
                scores = q[:, h] @ k[:, h].T * np.float32(1 / math.sqrt(q.shape[-1]))
                if hidden is not None:
                    scores[hidden] = -np.inf
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                out[:, h] = scores @ v[:, h]
            return out

        return numpy_attention
    if backend_name == "torch":
        import torch

        def torch_attention(q: Any, k: Any, v: Any) -> Any:
            q1, k1, v1 = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, H, T, D]
            with torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(q1, k1, v1, is_causal=is_causal)

        return torch_attention
    if backend_name == "jax":
        import jax

        attend = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q[None], k[None], v[None], is_causal=is_causal))
        return attend
    return None


def softmax_row(backend: backends.Backend, n_tokens: int, is_causal: bool, repeats: int) -> list[dict[str, Any]]:
    fn = softmax_attention(backend.name, is_causal)
    if fn is None:
        return []
    rng = np.random.default_rng(1)
    q, k, v = (
        backend.asarray(rng.standard_normal((n_tokens, H, D), dtype=np.float32), dtype="float32") for _ in range(3)
    )
    row = {"kind": "softmax", "backend": backend.name, "causal": is_causal, "T": n_tokens}
    try:
        row["seconds"] = best_time(lambda: fn(q, k, v), backend, repeats)
    except (MemoryError, RuntimeError) as exc:  # out of memory in the framework
        row["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return [row]


def softmax_bytes(backend_name: str, n_tokens: int) -> int:
    """Estimated memory of standard attention: the score matrix (one head at a time in NumPy)."""
    heads = H if backend_name == "jax" else 1  # NumPy here loops over heads; torch's kernel need not hold them all
    return 2 * heads * n_tokens * n_tokens * 4 + (n_tokens * n_tokens if backend_name == "numpy" else 0)


def step_rows(backend: backends.Backend, context: int, repeats: int) -> list[dict[str, Any]]:
    """Per-token cost after ``context`` tokens: Latte ``step`` against standard attention with a KV cache."""
    rng = np.random.default_rng(2)
    xp = backend.namespace()
    k_ctx = backend.asarray(rng.standard_normal((context, H, L), dtype=np.float32), dtype="float32")
    v_ctx = backend.asarray(rng.standard_normal((context, H, D), dtype=np.float32), dtype="float32")
    # The cost of a step does not depend on the state's values; the summary of a random context is a valid one.
    state = summarise(xp, k_ctx, v_ctx)
    q_t, k_t, v_t = (backend.asarray(rng.standard_normal((H, L), dtype=np.float32), dtype="float32") for _ in range(3))
    latte = best_time(lambda: latte_ref.step(q_t, k_t, v_t, state)[0], backend, max(repeats, 20))

    # Standard attention: the cache holds the context's keys and values, heads first; one query reads them all.
    k_cache = xp.moveaxis(k_ctx, 0, 1)  # [H, n, D] (L = D here)
    v_cache = xp.moveaxis(v_ctx, 0, 1)  # [H, n, D]
    scale = 1 / math.sqrt(D)

    def kv_step() -> Any:
        scores = (k_cache @ q_t[..., None])[..., 0] * scale  # [H, n]
        weights = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
        weights = weights / xp.sum(weights, axis=-1, keepdims=True)
        return (weights[:, None, :] @ v_cache)[:, 0, :]  # [H, D]

    kv = best_time(kv_step, backend, max(repeats, 5))
    return [
        {"kind": "step", "backend": backend.name, "method": "latte_step", "context": context, "seconds": latte},
        {"kind": "step", "backend": backend.name, "method": "kv_cache_softmax", "context": context, "seconds": kv},
    ]


# -- the plan -----------------------------------------------------------------------------------


def plan(config: Config) -> Iterator[Task]:
    """Every measurement of the run, in order (cheap first, so a partial run is still useful)."""
    for name in config.backends:
        backend = backends.get_backend(name)
        upto = config.max_tokens if name == "numpy" else config.max_tokens_other
        for n_tokens in sizes(upto):
            yield Task(f"{name} floor T={n_tokens}", partial(gemm_floor_row, backend, n_tokens, config.repeats))
            for form in ("bidirectional", "causal", "recurrent"):
                # The scan is a Python loop of steps: on other backends each step pays the framework's dispatch.
                recurrent_upto = config.max_tokens_other if name == "numpy" else min(config.max_tokens_other, 16_384)
                if form == "recurrent" and n_tokens > recurrent_upto:
                    continue
                repeats = 1 if form == "recurrent" else config.repeats
                yield Task(
                    f"{name} {form} T={n_tokens}",
                    partial(form_row, backend, form, n_tokens, repeats, memory=config.memory),
                )
            for is_causal in (False, True):
                if softmax_bytes(name, n_tokens) <= config.softmax_budget_bytes:
                    yield Task(
                        f"{name} softmax{' causal' if is_causal else ''} T={n_tokens}",
                        partial(softmax_row, backend, n_tokens, is_causal, config.repeats),
                    )
        if name == "numpy":
            for chunk_size in config.chunk_sizes:
                yield Task(
                    f"numpy causal chunk_size={chunk_size}",
                    partial(
                        form_row,
                        backend,
                        "causal",
                        config.target_tokens,
                        config.repeats,
                        memory=False,
                        chunk_size=chunk_size,
                        sweep="chunk_size",
                    ),
                )
        for context in config.step_contexts:
            yield Task(f"{name} step context={context}", partial(step_rows, backend, context, config.repeats))


# -- the targets --------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()) and "seconds" in row:
            return row
    return None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    return None if a is None or b is None else a["seconds"] / b["seconds"]


def summarise_targets(rows: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    """The issue's targets, each as a measured ratio (None where the run did not measure it)."""
    n = config.target_tokens
    small, large = config.scaling_tokens
    form = {"kind": "form", "backend": "numpy"}
    plain = [r for r in rows if "sweep" not in r]
    targets = [
        (
            "bidirectional / GEMM floor",
            f"T={n}",
            3.0,
            "<=",
            _ratio(_find(plain, **form, form="bidirectional", T=n), _find(plain, kind="floor", backend="numpy", T=n)),
        ),
        (
            "causal / GEMM floor",
            f"T={n}",
            5.0,
            "<=",
            _ratio(_find(plain, **form, form="causal", T=n), _find(plain, kind="floor", backend="numpy", T=n)),
        ),
    ]
    for f in ("bidirectional", "causal", "recurrent"):
        targets.append(
            (
                f"{f} time(T={large}) / time(T={small})",
                "scaling",
                9.0,
                "<=",
                _ratio(_find(plain, **form, form=f, T=large), _find(plain, **form, form=f, T=small)),
            )
        )
    for name in ("numpy", "torch"):
        targets.append(
            (
                f"{name}: standard causal attention / Latte causal",
                f"T={n}",
                10.0,
                ">=",
                _ratio(
                    _find(plain, kind="softmax", backend=name, causal=True, T=n),
                    _find(plain, kind="form", backend=name, form="causal", T=n),
                ),
            )
        )
    contexts = config.step_contexts
    step = {"kind": "step", "backend": "numpy"}
    targets.append(
        (
            f"step(context={contexts[-1]}) / step(context={contexts[0]})",
            "flat",
            1.2,
            "<=",
            _ratio(
                _find(rows, **step, method="latte_step", context=contexts[-1]),
                _find(rows, **step, method="latte_step", context=contexts[0]),
            ),
        )
    )
    mid = 65_536 if 65_536 in contexts else contexts[-1]
    targets.append(
        (
            f"KV-cache step / Latte step (context={mid})",
            "generation",
            20.0,
            ">=",
            _ratio(
                _find(rows, **step, method="kv_cache_softmax", context=mid),
                _find(rows, **step, method="latte_step", context=mid),
            ),
        )
    )
    out = [
        {
            "target": name,
            "where": where,
            "bound": bound,
            "sense": sense,
            "measured": value,
            "met": None if value is None else (value <= bound if sense == "<=" else value >= bound),
        }
        for name, where, bound, sense, value in targets
    ]
    biggest = max(
        (
            r
            for r in plain
            if r.get("form") == "causal" and r.get("backend") == "numpy" and "peak_bytes_excluding_inputs" in r
        ),
        key=lambda r: r["T"],
        default=None,
    )
    if biggest is not None:
        gb = biggest["peak_bytes_excluding_inputs"] / 1e9
        out.append(
            {
                "target": f"causal peak memory excluding inputs (GB), T={biggest['T']}",
                "where": "memory",
                "bound": 1.5,
                "sense": "<=",
                "measured": gb,
                "met": gb <= 1.5,
                "including_inputs_gb": biggest["peak_bytes_including_inputs"] / 1e9,
            }
        )
    chunk_rows = [r for r in rows if r.get("sweep") == "chunk_size"]
    if chunk_rows:
        best = min(chunk_rows, key=lambda r: r["seconds"])
        out.append(
            {
                "target": "fastest chunk_size",
                "where": f"T={n}",
                "bound": None,
                "sense": "",
                "measured": best["chunk_size"],
                "met": None,
            }
        )
    return out


if __name__ == "__main__":
    from latte_ref.commands import bench

    sys.exit(bench.main(sys.argv[1:]))
