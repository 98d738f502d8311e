"""The measurements of the benchmark suite: one function per kind of row, each timing in this process.

Every figure the targets need is a ratio of two timings taken in one process, each the
minimum of several repeats after a discarded warm-up: the machines these run on are
shared and noisy. Framework-specific references (``scaled_dot_product_attention``,
``jax.nn.dot_product_attention``, the authors' algorithm as a ``jax.lax.scan``) live
here, not in the ``latte_ref`` core; each imports its framework inside its function.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import platform
import resource
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from timing import best_time, interleaved_times, numpy_peak_bytes, thread_pools

import latte_ref
from latte_ref import backends
from latte_ref.state import summarise

__all__ = [
    "FORMS",
    "PEER_SETTING",
    "form_fn",
    "form_row",
    "gemm_floor",
    "gemm_floor_row",
    "machine",
    "packed_segment_ids",
    "peer_rows",
    "scan_rows",
    "sizes",
    "softmax_attention",
    "softmax_bytes",
    "softmax_inputs",
    "softmax_row",
    "step_rows",
]

H, L, D = 4, 32, 32
"""Heads, latents per head and value dimension per head of every benchmark (the issue's setting)."""


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
        "thread_pools": thread_pools(),
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


def packed_segment_ids(n_tokens: int, n_documents: int, seed: int = 0) -> np.ndarray:
    """Segment ids (T,) of ``n_documents`` documents of random lengths (cuts drawn uniformly) packed in one row."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n_tokens), size=min(n_documents, n_tokens) - 1, replace=False))
    return np.asarray(latte_ref.segment_ids_from_cu_seqlens([0, *cuts.tolist(), n_tokens]))


def form_fn(backend: backends.Backend, form: str, n_tokens: int, **extra: Any) -> Callable[[], Any]:
    """One form of Latte on random float32 inputs of T tokens, ready to call.

    ``extra`` may set ``chunk_size`` (causal) or ``packed``: that many documents of random
    lengths packed in the row, passed as ``segment_ids``.
    """
    q, k, v = random_inputs(n_tokens)
    xq, xk, xv = (backend.asarray(a, dtype="float32") for a in (q, k, v))
    fn = FORMS[form]
    if "chunk_size" in extra:
        fn = partial(latte_ref.causal, chunk_size=extra["chunk_size"])
    if "packed" in extra:
        ids = backend.asarray(packed_segment_ids(n_tokens, extra["packed"]), dtype="int64")
        fn = partial(getattr(latte_ref, form), segment_ids=ids)
    return lambda: fn(xq, xk, xv)


def form_record(backend: backends.Backend, form: str, n_tokens: int, seconds: float, *, memory: bool, **extra: Any):
    """The row of one form's time at T, with its peak memory on NumPy when ``memory``."""
    row: dict[str, Any] = {"kind": "form", "backend": backend.name, "form": form, "T": n_tokens, **extra}
    row["seconds"] = seconds
    row["input_bytes"] = n_tokens * H * (2 * L + D) * 4  # q, k (T, H, L) and v (T, H, D) in float32
    if memory and backend.name == "numpy" and form != "recurrent":  # the scan holds one output, as causal does
        row["peak_bytes_excluding_inputs"] = numpy_peak_bytes(form_fn(backend, form, n_tokens, **extra))
        row["peak_bytes_including_inputs"] = row["peak_bytes_excluding_inputs"] + row["input_bytes"]
        row["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def form_row(backend: backends.Backend, form: str, n_tokens: int, repeats: int, *, memory: bool, **extra: Any):
    """One form's time at T (float32), timed alone, and its peak memory on NumPy."""
    seconds = best_time(form_fn(backend, form, n_tokens, **extra), backend, repeats)
    return [form_record(backend, form, n_tokens, seconds, memory=memory, **extra)]


# -- references ---------------------------------------------------------------------------------


def gemm_floor(backend: backends.Backend, n_tokens: int) -> Callable[[], Any]:
    """The two products every Latte evaluation needs, alone: S = k^T v (L x T @ T x D) and p S (T x L @ L x D).

    No form can be faster: each computes both products, and more.
    """
    q, k, v = random_inputs(n_tokens)
    xp = backend.namespace()
    k_hlt = backend.asarray(np.ascontiguousarray(k.transpose(1, 2, 0)), dtype="float32")  # [H, L, T]
    v_htd = backend.asarray(np.ascontiguousarray(v.transpose(1, 0, 2)), dtype="float32")  # [H, T, D]
    p_htl = backend.asarray(np.ascontiguousarray(q.transpose(1, 0, 2)), dtype="float32")  # [H, T, L]
    return lambda: xp.matmul(p_htl, xp.matmul(k_hlt, v_htd))


def gemm_floor_row(backend: backends.Backend, n_tokens: int, repeats: int) -> list[dict[str, Any]]:
    seconds = best_time(gemm_floor(backend, n_tokens), backend, repeats)
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


def softmax_inputs(backend: backends.Backend, n_tokens: int) -> tuple[Any, Any, Any]:
    """q, k, v (T, H, D) of standard attention, float32."""
    rng = np.random.default_rng(1)
    shape = (n_tokens, H, D)
    return tuple(backend.asarray(rng.standard_normal(shape, dtype=np.float32), dtype="float32") for _ in range(3))


def softmax_row(backend: backends.Backend, n_tokens: int, is_causal: bool, repeats: int) -> list[dict[str, Any]]:
    fn = softmax_attention(backend.name, is_causal)
    if fn is None:
        return []
    q, k, v = softmax_inputs(backend, n_tokens)
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


def step_rows(
    backend: backends.Backend, contexts: tuple[int, ...], repeats: int, spread: float = 0.0
) -> list[dict[str, Any]]:
    """Per-token cost after each context: Latte ``step`` against standard attention with a KV cache.

    Every context's two functions are timed in the same rounds, spread over ``spread`` seconds:
    the flat-cost target compares steps of microseconds, which drift by tens of percent between
    rounds timed apart, and run at the machine's slow speed for milliseconds at a time.
    """
    rng = np.random.default_rng(2)
    xp = backend.namespace()
    functions: dict[str, tuple[Any, Callable[[], Any]]] = {}
    for context in contexts:
        k_ctx = backend.asarray(rng.standard_normal((context, H, L), dtype=np.float32), dtype="float32")
        v_ctx = backend.asarray(rng.standard_normal((context, H, D), dtype=np.float32), dtype="float32")
        # The cost of a step does not depend on the state's values; the summary of a random context is a valid one.
        state = summarise(xp, k_ctx, v_ctx)
        q_t, k_t, v_t = (
            backend.asarray(rng.standard_normal((H, L), dtype=np.float32), dtype="float32") for _ in range(3)
        )
        # Standard attention: the cache holds the context's keys and values, heads first; one query reads them all.
        k_cache = xp.moveaxis(k_ctx, 0, 1)  # [H, n, D] (L = D here)
        v_cache = xp.moveaxis(v_ctx, 0, 1)  # [H, n, D]
        functions[f"latte {context}"] = (backend, partial(_latte_step, q_t, k_t, v_t, state))
        functions[f"kv {context}"] = (backend, partial(_kv_step, xp, q_t, k_cache, v_cache))
    times = interleaved_times(functions, repeats, calls=20, spread=spread)
    return [
        {
            "kind": "step",
            "backend": backend.name,
            "method": method,
            "context": context,
            "seconds": times[f"{name} {context}"],
        }
        for context in contexts
        for method, name in (("latte_step", "latte"), ("kv_cache_softmax", "kv"))
    ]


def _latte_step(q_t: Any, k_t: Any, v_t: Any, state: Any) -> Any:
    return latte_ref.step(q_t, k_t, v_t, state)[0]


def _kv_step(xp: Any, q_t: Any, k_cache: Any, v_cache: Any) -> Any:
    scores = (k_cache @ q_t[..., None])[..., 0] * (1 / math.sqrt(D))  # [H, n]
    weights = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
    weights = weights / xp.sum(weights, axis=-1, keepdims=True)
    return (weights[:, None, :] @ v_cache)[:, 0, :]  # [H, D]


def scan_rows(backend: backends.Backend, n_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """The two ways ``causal`` carries the state across N = T / C chunks: a loop, and a doubling scan."""
    causal_module = importlib.import_module("latte_ref.causal")
    n_chunks = n_tokens // causal_module.DEFAULT_CHUNK_SIZE
    rng = np.random.default_rng(4)
    decay, a_local = (
        backend.asarray(rng.uniform(0, 1, (n_chunks, H, L)).astype(np.float32), dtype="float32") for _ in range(2)
    )
    s_local = backend.asarray(rng.standard_normal((n_chunks, H, L, D), dtype=np.float32), dtype="float32")
    state = latte_ref.init_state((), H, L, D, xp=backend.namespace(), dtype=decay.dtype)
    xp = backend.namespace()
    functions = {}
    for method in ("loop", "doubling"):
        fn = partial(getattr(causal_module, f"_{method}_scan"), xp)
        if backend.name == "jax":
            import jax

            fn = jax.jit(fn)
        functions[method] = (backend, lambda fn=fn: fn(decay, None, a_local, s_local, state)[1])
    times = interleaved_times(functions, repeats)
    return [
        {"kind": "scan", "backend": backend.name, "method": m, "T": n_tokens, "chunks": n_chunks, "seconds": times[m]}
        for m in functions
    ]


# -- the authors' algorithm as a peer -----------------------------------------------------------

PEER_SETTING = {"batch": 2, "d_model": 128, "n_latents": 128, "n_heads": 4}
"""The authors' setting for their causal layer: B = 2, d_model = L = 128 (32 latents per head), H = 4."""


def scan_latte_layer(n_heads: int, unroll: int = 100) -> Callable[..., Any]:
    """A causal Latte layer written as the authors' code computes it: a ``jax.lax.scan`` over tokens, under ``jit``.

    The carry is the running max, normaliser and numerator of every latent, updated token by
    token, as in their ``StableScanLatte`` (unrolled 100 steps by default, as theirs); the projections
    and head split are those of :func:`latte_ref.latte_attention`. Each call makes a new function,
    compiled on its first call.
    """
    import jax
    import jax.numpy as jnp

    def layer(x: Any, wq: Any, wk: Any, wv: Any, wo: Any) -> Any:
        batch, n_tokens, d_model = x.shape

        def heads(a: Any) -> Any:  # [B, T, n_heads * X] -> [T, B, H, X]
            return jnp.moveaxis(a.reshape(batch, n_tokens, n_heads, -1), 1, 0)

        q, k, v = heads(x @ wq), heads(x @ wk), heads(x @ wv)
        p_latent = jax.nn.softmax(q, axis=-1)

        def token(carry: Any, inputs: Any) -> Any:
            running_max, normaliser, numerator = carry
            p_t, k_t, v_t = inputs  # [B, H, L], [B, H, L], [B, H, D]
            new_max = jnp.maximum(running_max, k_t)
            decay, weight = jnp.exp(running_max - new_max), jnp.exp(k_t - new_max)
            normaliser = normaliser * decay + weight
            numerator = numerator * decay[..., None] + weight[..., None] * v_t[..., None, :]
            y_t = jnp.einsum("bhl,bhld->bhd", p_t / normaliser, numerator)
            return (new_max, normaliser, numerator), y_t

        init = (
            jnp.full(k.shape[1:], -jnp.inf, dtype=x.dtype),
            jnp.zeros(k.shape[1:], dtype=x.dtype),
            jnp.zeros((*k.shape[1:], v.shape[-1]), dtype=x.dtype),
        )
        _, y = jax.lax.scan(token, init, (p_latent, k, v), unroll=unroll)  # [T, B, H, D]
        return jnp.moveaxis(y, 0, 1).reshape(batch, n_tokens, d_model) @ wo

    return jax.jit(layer)


@functools.cache
def _peer_layer(n_heads: int, unroll: int) -> Callable[..., Any]:
    """This process's scan for :func:`peer_rows`, so that the run's later passes do not compile it again."""
    return scan_latte_layer(n_heads, unroll)


def peer_rows(n_tokens: int, repeats: int, unroll: int = 100, spread: float = 0.0) -> list[dict[str, Any]]:
    """The NumPy causal layer against the scan peer on JAX (CPU), after checking they agree to 1e-5."""
    import jax
    import jax.numpy as jnp

    setting = PEER_SETTING
    params = latte_ref.init_params(
        setting["d_model"], setting["n_latents"], setting["n_heads"], dtype=np.float32, seed=0
    )
    x = np.random.default_rng(3).standard_normal((setting["batch"], n_tokens, setting["d_model"]), dtype=np.float32)
    ours = latte_ref.latte_attention(x, params, causal=True)
    cpu = jax.devices("cpu")[0]
    weights = [jax.device_put(jnp.asarray(w), cpu) for w in (params.wq, params.wk, params.wv, params.wo)]
    x_jax = jax.device_put(jnp.asarray(x), cpu)
    peer = _peer_layer(setting["n_heads"], unroll)
    theirs = np.asarray(peer(x_jax, *weights))
    error = float(np.max(np.abs(theirs - ours)) / np.max(np.abs(ours)))
    row: dict[str, Any] = {"kind": "peer", "backend": "numpy", "T": n_tokens, **setting, "unroll": unroll}
    row["relative_error"] = error
    if error > 1e-5:
        row["error"] = f"the peer disagrees with latte_ref: relative error {error:.2e} > 1e-5; not timed"
        return [row]
    numpy_backend, jax_backend = backends.get_backend("numpy"), backends.get_backend("jax")
    times = interleaved_times(
        {
            "numpy": (numpy_backend, lambda: latte_ref.latte_attention(x, params, causal=True)),
            "jax": (jax_backend, lambda: peer(x_jax, *weights)),
        },
        repeats,
        spread=spread,
    )
    row["numpy_causal_layer_seconds"], row["jax_scan_seconds"] = times["numpy"], times["jax"]
    row["seconds"] = row["numpy_causal_layer_seconds"]
    return [row]
