"""The model's configuration, its weights and decoding state, random initialisation and tree utilities."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import array_api_extra as xpx
import numpy as np

from .._array import Array, resolve_namespace
from ..state import LatteState

__all__ = ["DecodeState", "LatteModel", "ModelConfig", "init_model", "leaves", "tree_map"]


@dataclass(frozen=True)
class ModelConfig:
    """The integer hyper-parameters of a :class:`LatteModel` (never differentiated).

    Attributes
    ----------
    vocab_size : int
        V, the number of token ids.
    d_model : int
        Width of the residual stream; even (sin and cos halves of the positions).
    n_layers : int
        Number of blocks.
    n_heads : int
        H; divides ``d_model`` and ``n_latents``.
    n_latents : int
        Latents over all heads (``n_latents // n_heads`` per head), as in :class:`latte_ref.LatteParams`.
    d_hidden : int
        Width of the gated MLP.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_latents: int
    d_hidden: int

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_latents", "d_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for sinusoidal positions, got {self.d_model}")
        if self.d_model % self.n_heads or self.n_latents % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) and n_latents ({self.n_latents}) "
                f"must be divisible by n_heads ({self.n_heads})"
            )

    @property
    def latents_per_head(self) -> int:
        return self.n_latents // self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class LatteModel:
    """A configuration and its weights.

    ``weights`` is a dict::

        embedding    (V, d_model)
        blocks       list of n_layers dicts:
            mixer_norm   {"scale": (d_model,), "bias": (d_model,)}
            wq, wk       (d_model, n_latents)      latent logits of queries and keys
            wv, wo       (d_model, d_model)        values and output
            mlp_norm     {"scale", "bias"}
            w_gate, w_up (d_model, d_hidden)
            w_down       (d_hidden, d_model)
        final_norm   {"scale", "bias"}
        unembedding  (d_model, V)

    To differentiate, rebuild the model around the weights being traced, e.g.
    ``jax.grad(lambda w: next_token_loss(LatteModel(model.config, w), tokens))(model.weights)``.
    """

    config: ModelConfig
    weights: dict[str, Any]


class DecodeState(NamedTuple):
    """What decoding carries from one token to the next: one Latte state per layer and the position.

    Attributes
    ----------
    layers : tuple of LatteState
        The state of each layer's mixer, shapes (..., H, L) and (..., H, L, D).
    position : int array, shape ()
        Index of the next token (the number of tokens seen).
    """

    layers: tuple[LatteState, ...]
    position: Array


def init_model(
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_latents: int,
    *,
    d_hidden: int | None = None,
    xp: Any = None,
    dtype: Any = None,
    device: Any = None,
    seed: int = 0,
) -> LatteModel:
    """Random weights, drawn with NumPy from ``seed`` so that every backend gets the same model.

    Matrices are normal with standard deviation ``1 / sqrt(fan_in)``; the two that write
    into the residual stream (``wo``, ``w_down``) are further scaled by
    ``1 / sqrt(2 n_layers)`` so the stream's variance does not grow with depth. Norms
    start as the identity, the embedding has unit variance like the positions.

    Parameters
    ----------
    vocab_size, d_model, n_layers, n_heads, n_latents : int
        See :class:`ModelConfig`.
    d_hidden : int, optional
        Width of the gated MLP; ``4 * d_model`` when omitted.
    xp : namespace, optional
        Array namespace of the weights; NumPy when omitted.
    dtype, device : optional
        Floating dtype (the namespace's default when omitted) and device.
    seed : int

    Examples
    --------
    >>> import latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_latents=8)
    >>> model.weights["blocks"][0]["wq"].shape, model.config.latents_per_head
    ((16, 8), 2)
    """
    d_hidden = 4 * d_model if d_hidden is None else d_hidden
    config = ModelConfig(vocab_size, d_model, n_layers, n_heads, n_latents, d_hidden)
    xp = resolve_namespace(xp)
    if dtype is None:
        dtype = xpx.default_dtype(xp, device=device)
    rng = np.random.default_rng(seed)
    residual_scale = 1.0 / math.sqrt(2 * n_layers)

    def matrix(rows: int, cols: int, scale: float = 1.0) -> Array:
        return xp.asarray(rng.normal(scale=scale / math.sqrt(rows), size=(rows, cols)), dtype=dtype, device=device)

    def norm() -> dict[str, Array]:
        return {
            "scale": xp.ones((config.d_model,), dtype=dtype, device=device),
            "bias": xp.zeros((config.d_model,), dtype=dtype, device=device),
        }

    d, f = config.d_model, config.d_hidden
    blocks = [
        {
            "mixer_norm": norm(),
            "wq": matrix(d, n_latents),
            "wk": matrix(d, n_latents),
            "wv": matrix(d, d),
            "wo": matrix(d, d, residual_scale),
            "mlp_norm": norm(),
            "w_gate": matrix(d, f),
            "w_up": matrix(d, f),
            "w_down": matrix(f, d, residual_scale),
        }
        for _ in range(n_layers)
    ]
    weights = {
        "embedding": xp.asarray(rng.normal(size=(vocab_size, d)), dtype=dtype, device=device),
        "blocks": blocks,
        "final_norm": norm(),
        "unembedding": matrix(d, vocab_size),
    }
    return LatteModel(config, weights)


def leaves(tree: Any) -> Iterator[Array]:
    """The arrays of a nested dict/list/tuple, in a fixed order (dict keys sorted): e.g. for an optimiser.

    Examples
    --------
    >>> import latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=5, d_model=4, n_layers=1, n_heads=1, n_latents=2, d_hidden=8)
    >>> sum(int(np.prod(w.shape)) for w in lm.leaves(model.weights))
    208
    """
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from leaves(tree[key])
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from leaves(item)
    else:
        yield tree


def tree_map(fn: Any, tree: Any) -> Any:
    """``fn`` applied to every array of a nested dict/list/tuple, keeping the structure.

    Examples
    --------
    >>> import latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=5, d_model=4, n_layers=1, n_heads=1, n_latents=2)
    >>> lm.tree_map(lambda w: w.shape, model.weights)["blocks"][0]["wq"]
    (4, 2)
    """
    if isinstance(tree, dict):
        return {key: tree_map(fn, value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, item) for item in tree)
    return fn(tree)
