"""Latte as a Flax NNX layer: ``LatteAttention``, a drop-in ``flax.nnx.Module`` for attention.

Imports JAX and Flax (this module only: the rest of latte_ref imports no framework), and
makes :class:`latte_ref.LatteParams` a JAX pytree on import.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .._layer import LatteParams, apply_layer, register_jax_pytree
from ..state import LatteState

__all__ = ["LatteAttention"]

register_jax_pytree()


class LatteAttention(nnx.Module):
    """Latent attention as a Flax NNX module: ``x @ wq, x @ wk, x @ wv``, Latte per head, then ``@ wo``.

    The weights are ``nnx.Param``\\ s in the authors' layout (see :class:`latte_ref.LatteParams`),
    drawn as :func:`latte_ref.init_params` draws them (normal, standard deviation
    ``1 / sqrt(d_model)``) from ``rngs.params()``. The output is that of
    :func:`latte_ref.latte_attention` on ``self.to_params()``.

    Parameters
    ----------
    d_model, n_latents, n_heads : int
        Model width, latents of all heads together, heads; d_model and n_latents are multiples of n_heads.
    causal : bool
        Each token sees itself and the past (a decoder), or the whole sequence (an encoder).
    rngs : nnx.Rngs
    dtype : optional
        Of the parameters (JAX's default float dtype when None).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from latte_ref.layers.flax import LatteAttention
    >>> layer = LatteAttention(64, 16, 4, causal=True, rngs=nnx.Rngs(0))
    >>> x = jax.random.normal(jax.random.key(1), (2, 10, 64))
    >>> layer(x).shape
    (2, 10, 64)
    >>> grads = nnx.grad(lambda m: m(x).sum())(layer)
    >>> grads["wq"].shape
    (64, 16)
    """

    def __init__(
        self,
        d_model: int,
        n_latents: int,
        n_heads: int,
        *,
        causal: bool = False,
        rngs: nnx.Rngs,
        dtype: Any = None,
    ) -> None:
        for name, size in (("n_latents", n_latents), ("d_model", d_model)):
            if not isinstance(n_heads, int) or n_heads <= 0 or not isinstance(size, int) or size <= 0:
                raise ValueError(
                    f"d_model, n_latents and n_heads must be positive ints, got {d_model, n_latents, n_heads}"
                )
            if size % n_heads:
                raise ValueError(f"{name} must be a multiple of n_heads={n_heads}, got {size}")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        self.d_model, self.n_latents, self.n_heads, self.causal = d_model, n_latents, n_heads, causal
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        scale = 1.0 / math.sqrt(d_model)

        def draw(shape: tuple[int, int]) -> nnx.Param:
            return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype=dtype))

        self.wq = draw((d_model, n_latents))
        self.wk = draw((d_model, n_latents))
        self.wv = draw((d_model, d_model))
        self.wo = draw((d_model, d_model))

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        state: LatteState | None = None,
        return_state: bool = False,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> Any:
        """Latte over x: (B, T, d_model) -> (B, T, d_model), and the state after x when ``return_state``.

        The arguments are those of :meth:`latte_ref.layers.torch.LatteAttention.forward`: ``mask`` (B, T)
        True for a real token; ``segment_ids`` (B, T) the documents of a packed row; ``state`` and
        ``return_state`` for ``causal=True``, streaming as
        :func:`latte_ref.causal`; ``context`` (B, Tk, d_model) and ``context_mask`` (B, Tk) for
        cross-attention with ``causal=False``.

        An input narrower than the weights (bfloat16 into a float32 layer) is promoted, as JAX
        promotes; a wider one (float64 into float32) is refused rather than silently widening the layer.
        """
        weights = self.wq.dtype
        if hasattr(x, "dtype") and x.dtype != weights and jnp.promote_types(x.dtype, weights) != weights:
            raise TypeError(
                f"x has dtype {x.dtype} but the layer's weights are {weights}: cast x to the layer's dtype"
                f" (x.astype({weights})) or build the layer with dtype={x.dtype}"
            )
        return apply_layer(
            x,
            self.to_params(),
            causal=self.causal,
            mask=mask,
            segment_ids=segment_ids,
            state=state,
            return_state=return_state,
            context=context,
            context_mask=context_mask,
        )

    def __repr__(self) -> str:
        # One line, as the torch layer prints (NNX's own repr lists every parameter).
        return (
            f"LatteAttention(d_model={self.d_model}, n_latents={self.n_latents}, n_heads={self.n_heads},"
            f" causal={self.causal})"
        )

    __str__ = __repr__  # print() too, which NNX routes to its own repr

    def to_params(self) -> LatteParams:
        """The layer's weights as :class:`latte_ref.LatteParams` (a pytree: it passes through ``jax.jit``)."""
        return LatteParams(wq=self.wq[...], wk=self.wk[...], wv=self.wv[...], wo=self.wo[...], n_heads=self.n_heads)

    @classmethod
    def from_params(cls, params: LatteParams, *, causal: bool = False) -> LatteAttention:
        """A layer holding ``params`` (of any backend) as JAX arrays, in their dtype.

        Examples
        --------
        >>> import latte_ref
        >>> from latte_ref.layers.flax import LatteAttention
        >>> layer = LatteAttention.from_params(latte_ref.init_params(16, 8, 4), causal=True)
        >>> layer.to_params()
        LatteParams(d_model=16, n_latents=8, n_heads=4, wq/wk (16, 8), wv/wo (16, 16), float64)
        """
        if not isinstance(params, LatteParams):
            raise TypeError(f"params must be a LatteParams, got {type(params).__name__}")
        layer = nnx.eval_shape(
            lambda: cls(params.d_model, params.n_latents, params.n_heads, causal=causal, rngs=nnx.Rngs(0))
        )
        for name in ("wq", "wk", "wv", "wo"):
            setattr(layer, name, nnx.Param(_jax_array(getattr(params, name))))
        return layer


def _jax_array(w: Any) -> jax.Array:
    """A weight of any backend as a JAX array (PyTorch's through NumPy, detached from its graph)."""
    if hasattr(w, "detach"):
        w = w.detach().cpu().numpy()
    return jnp.asarray(w)
