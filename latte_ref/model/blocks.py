"""The pieces of a block, on arrays of any namespace: positions, norms, the MLP and the head layout."""

from __future__ import annotations

import math
from typing import Any

from .._array import Array, compute_dtype, device_of, namespace_of
from .._layer import merge_heads as merge_heads_into
from .._layer import split_heads
from .config import LatteModel, ModelConfig, tree_map

__all__ = [
    "LAYER_NORM_EPS",
    "embed",
    "gated_mlp",
    "gelu",
    "latent_projections",
    "layer_norm",
    "merge_heads",
    "sinusoidal_position",
]

LAYER_NORM_EPS = 1e-5


def sinusoidal_position(xp: Any, positions: Array, d_model: int, dtype: Any) -> Array:
    r"""``P(t) = [sin(t ω_i), cos(t ω_i)]`` with ``ω_i = 10000^{-2i/d}``, i < d/2: positions (...) -> (..., d)."""
    half = d_model // 2
    frequencies = xp.exp(
        xp.arange(half, dtype=dtype, device=device_of(positions)) * (-math.log(10000.0) / half)
    )  # [d/2]
    angles = xp.astype(positions, dtype)[..., None] * frequencies  # [..., d/2]
    return xp.concat([xp.sin(angles), xp.cos(angles)], axis=-1)  # [..., d]


def layer_norm(xp: Any, x: Array, norm: dict[str, Array]) -> Array:
    r"""``(x - μ) / sqrt(σ² + ε) * scale + bias`` over the last axis (..., d)."""
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    variance = xp.mean(centred * centred, axis=-1, keepdims=True)
    return centred / xp.sqrt(variance + LAYER_NORM_EPS) * norm["scale"] + norm["bias"]


def gelu(xp: Any, x: Array) -> Array:
    r"""GELU, tanh form: ``x/2 (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`` (the standard has no erf)."""
    return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def gated_mlp(xp: Any, x: Array, block: dict[str, Any]) -> Array:
    r"""``(gelu(x W_gate) ⊙ x W_up) W_down``: (..., d) -> (..., d)."""
    return (gelu(xp, x @ block["w_gate"]) * (x @ block["w_up"])) @ block["w_down"]


def embed(xp: Any, embedding: Array, tokens: Array) -> Array:
    """Rows of the embedding: integer tokens (...) -> (..., d)."""
    rows = xp.take(embedding, xp.reshape(tokens, (-1,)), axis=0)  # [N, d]
    return xp.reshape(rows, (*tokens.shape, embedding.shape[-1]))


def latent_projections(xp: Any, h: Array, block: dict[str, Any], config: ModelConfig) -> tuple[Array, Array, Array]:
    """q, k: (..., H, L) and v: (..., H, D) from the normed stream h (..., d); head h owns the h-th column group."""
    heads = config.n_heads
    q = split_heads(xp, h @ block["wq"], heads)  # [..., H, L]
    k = split_heads(xp, h @ block["wk"], heads)  # [..., H, L]
    v = split_heads(xp, h @ block["wv"], heads)  # [..., H, D]
    return q, k, v


def merge_heads(xp: Any, y: Array, block: dict[str, Any]) -> Array:
    """(..., H, D) -> (..., d) @ W_o."""
    return merge_heads_into(xp, y, block["wo"])


def _compute_weights(model: LatteModel) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(xp, out_dtype, dtype, weights in dtype)``: 16-bit weights compute in float32, as in the core."""
    if not isinstance(model, LatteModel):
        raise TypeError(f"params must be a LatteModel, got {type(model).__name__}")
    embedding = model.weights["embedding"]
    xp = namespace_of(embedding=embedding)
    out_dtype, dtype = compute_dtype(xp, embedding)
    weights = model.weights if dtype == out_dtype else tree_map(lambda w: xp.astype(w, dtype), model.weights)
    return xp, out_dtype, dtype, weights


def _check_tokens(xp: Any, tokens: Array, name: str, min_ndim: int) -> None:
    if not hasattr(tokens, "dtype") or not xp.isdtype(tokens.dtype, "integral"):
        raise TypeError(f"{name} must be an integer array of token ids, got {getattr(tokens, 'dtype', type(tokens))}")
    if tokens.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got shape {tuple(tokens.shape)}")
