"""The compiled rows of the benchmark suite: ``jax.jit`` and ``torch.compile`` of the forms and layers.

Each function returns rows as :mod:`measurements` does, timings from this process only:

- :func:`jax_peer_rows`: ``jax.jit(latte_attention(..., causal=True))`` against the authors'
  algorithm (a ``lax.scan`` under ``jit``) at their setting, after checking that the two agree;
- :func:`jax_form_rows`: ``jax.jit`` of ``causal`` and of ``bidirectional`` at one length;
- :func:`torch_compile_rows`: a training step (forward and backward) of the causal torch layer,
  eager and under ``torch.compile(fullgraph=True)``, with the time of the first compile and of
  the recompile that a new length costs.

Every framework is imported inside its function.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from measurements import PEER_SETTING, random_inputs, scan_latte_layer
from timing import interleaved_times

import latte_ref
from latte_ref import backends

__all__ = ["compiled_targets", "jax_form_rows", "jax_peer_rows", "torch_compile_rows"]


def jax_peer_rows(n_tokens: int, repeats: int, unroll: int = 100) -> list[dict[str, Any]]:
    """``jax.jit`` of the causal layer against the authors' scan, both on JAX (CPU), float32."""
    import jax
    import jax.numpy as jnp

    setting = PEER_SETTING
    params = latte_ref.init_params(
        setting["d_model"], setting["n_latents"], setting["n_heads"], dtype=np.float32, seed=0
    )
    x = np.random.default_rng(3).standard_normal((setting["batch"], n_tokens, setting["d_model"]), dtype=np.float32)
    cpu = jax.devices("cpu")[0]
    weights = [jax.device_put(jnp.asarray(w), cpu) for w in (params.wq, params.wk, params.wv, params.wo)]
    x_jax = jax.device_put(jnp.asarray(x), cpu)
    params_jax = latte_ref.LatteParams(*weights, n_heads=setting["n_heads"])
    ours = jax.jit(lambda x, p: latte_ref.latte_attention(x, p, causal=True))
    peer = scan_latte_layer(setting["n_heads"], unroll)
    row: dict[str, Any] = {"kind": "jax_peer", "backend": "jax", "T": n_tokens, **setting, "unroll": unroll}
    start = time.perf_counter()
    y_ours = np.asarray(ours(x_jax, params_jax))
    row["ours_compile_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    y_peer = np.asarray(peer(x_jax, *weights))
    row["peer_compile_seconds"] = time.perf_counter() - start
    row["relative_error"] = float(np.max(np.abs(y_peer - y_ours)) / np.max(np.abs(y_ours)))
    if row["relative_error"] > 1e-5:
        row["error"] = f"the peer disagrees with latte_ref: relative error {row['relative_error']:.2e}; not timed"
        return [row]
    jax_backend = backends.get_backend("jax")
    times = interleaved_times(
        {"ours": (jax_backend, lambda: ours(x_jax, params_jax)), "peer": (jax_backend, lambda: peer(x_jax, *weights))},
        repeats,
    )
    row["jax_causal_layer_jit_seconds"], row["jax_scan_seconds"] = times["ours"], times["peer"]
    row["seconds"] = row["jax_causal_layer_jit_seconds"]
    return [row]


def jax_form_rows(n_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """``jax.jit`` of ``causal`` and of ``bidirectional`` at B = 1, H = 4, L = D = 32, float32."""
    import jax

    backend = backends.get_backend("jax")
    q, k, v = (backend.asarray(a, dtype="float32") for a in random_inputs(n_tokens))
    compiled = {form: jax.jit(getattr(latte_ref, form)) for form in ("causal", "bidirectional")}
    times = interleaved_times({form: (backend, lambda fn=fn: fn(q, k, v)) for form, fn in compiled.items()}, repeats)
    return [{"kind": "jit_form", "backend": "jax", "form": f, "T": n_tokens, "seconds": t} for f, t in times.items()]


def torch_compile_rows(lengths: tuple[int, int], repeats: int) -> list[dict[str, Any]]:
    """A training step of the causal torch layer (B = 2, d_model = L = 128, H = 4), eager and compiled.

    The layer is compiled with ``fullgraph=True`` (a graph break is an error) and static
    shapes: ``torch.cond`` (the factored or per-token choice) rejects the strides that a
    symbolic number of chunks gives its branches' outputs, so each new T compiles anew.
    The rows record the first call's time (the compile) at each length.
    """
    import torch

    from latte_ref.layers.torch import LatteAttention

    torch.manual_seed(0)
    setting = PEER_SETTING
    layer = LatteAttention(setting["d_model"], setting["n_latents"], setting["n_heads"], causal=True)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    backend = backends.get_backend("torch")
    rows = []
    for n_tokens in lengths:
        x = torch.randn(setting["batch"], n_tokens, setting["d_model"])

        def train_step(module: Any = layer, x: Any = x) -> Any:
            module.zero_grad(set_to_none=True)
            loss = module(x).square().mean()
            loss.backward()
            return loss

        start = time.perf_counter()
        train_step(compiled)
        compile_seconds = time.perf_counter() - start
        times = interleaved_times(
            {"eager": (backend, train_step), "compiled": (backend, lambda x=x: train_step(compiled, x))}, repeats
        )
        eager, fast = times["eager"], times["compiled"]
        error = float((compiled(x) - layer(x)).abs().max() / layer(x).abs().max())
        rows.append(
            {
                "kind": "torch_compile",
                "backend": "torch",
                "T": n_tokens,
                "first_call_seconds": compile_seconds,
                "eager_step_seconds": eager,
                "compiled_step_seconds": fast,
                "relative_error": error,
                "seconds": fast,
            }
        )
    return rows


def compiled_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, str, float | None]]:
    """The compiled-speed targets from the rows above: (target, where, bound, sense, measured)."""
    targets: list[tuple[str, str, float, str, float | None]] = []
    peers = sorted((r for r in rows if r.get("kind") == "jax_peer" and "jax_scan_seconds" in r), key=lambda r: r["T"])
    for row in peers:
        bound = 3.0 if row["T"] >= 16_384 else 2.0
        targets.append(
            (
                "authors' scan (JAX, jit) / JAX jit causal layer",
                f"T={row['T']}, B=2, d_model=L=128, H=4",
                bound,
                ">=",
                row["jax_scan_seconds"] / row["jax_causal_layer_jit_seconds"],
            )
        )
    jit = {r["form"]: r for r in rows if r.get("kind") == "jit_form"}
    if len(jit) == 2:
        where = f"T={jit['causal']['T']}"
        ratio = jit["causal"]["seconds"] / jit["bidirectional"]["seconds"]
        targets.append(("jax jit: causal / bidirectional", where, 4.0, "<=", ratio))
    compiled = sorted((r for r in rows if r.get("kind") == "torch_compile"), key=lambda r: r["T"])
    if compiled:
        first, *others = compiled
        targets.append(("torch.compile: first compile (s)", f"T={first['T']}", 30.0, "<=", first["first_call_seconds"]))
        for row in others:
            targets.append(("torch.compile: a new T (s)", f"T={row['T']}", 15.0, "<=", row["first_call_seconds"]))
        for row in compiled:
            ratio = row["compiled_step_seconds"] / row["eager_step_seconds"]
            targets.append(("torch.compile: compiled / eager training step", f"T={row['T']}", 1.0, "<=", ratio))
    return targets
