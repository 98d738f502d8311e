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
from measurements import PEER_SETTING, best_time, random_inputs, scan_latte_layer

import latte_ref
from latte_ref import backends

__all__ = ["jax_form_rows", "jax_peer_rows", "torch_compile_rows"]


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
    row["jax_causal_layer_jit_seconds"] = best_time(lambda: ours(x_jax, params_jax), jax_backend, repeats)
    row["jax_scan_seconds"] = best_time(lambda: peer(x_jax, *weights), jax_backend, repeats)
    row["seconds"] = row["jax_causal_layer_jit_seconds"]
    return [row]


def jax_form_rows(n_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """``jax.jit`` of ``causal`` and of ``bidirectional`` at B = 1, H = 4, L = D = 32, float32."""
    import jax

    backend = backends.get_backend("jax")
    q, k, v = (backend.asarray(a, dtype="float32") for a in random_inputs(n_tokens))
    rows = []
    for form in ("causal", "bidirectional"):
        fn = jax.jit(getattr(latte_ref, form))
        seconds = best_time(lambda fn=fn: fn(q, k, v), backend, repeats)
        rows.append({"kind": "jit_form", "backend": "jax", "form": form, "T": n_tokens, "seconds": seconds})
    return rows


def torch_compile_rows(lengths: tuple[int, int], repeats: int) -> list[dict[str, Any]]:
    """A training step of the causal torch layer (B = 2, d_model = L = 128, H = 4), eager and compiled.

    The layer is compiled with ``fullgraph=True`` (a graph break is an error) and
    ``dynamic=True``, so that the second length reuses the first graph's code where
    the shapes allow; the rows record the first call's time (the compile) at each length.
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
        eager = best_time(train_step, backend, repeats)
        fast = best_time(lambda x=x: train_step(compiled, x), backend, repeats)
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
