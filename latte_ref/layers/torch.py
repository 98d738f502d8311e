"""Latte as a PyTorch layer: ``LatteAttention``, a drop-in ``torch.nn.Module`` for attention.

Imports PyTorch (this module only: the rest of latte_ref imports no framework).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .._layer import LatteParams, apply_layer, register_jax_pytree
from ..state import LatteState
from ._torch_multihead import LatteMultiheadAttention

__all__ = ["LatteAttention", "LatteMultiheadAttention"]


class LatteAttention(nn.Module):
    """Latent attention as a ``torch.nn.Module``: ``x @ wq, x @ wk, x @ wv``, Latte per head, then ``@ wo``.

    The weights are ``nn.Parameter``\\ s in the authors' layout (see :class:`latte_ref.LatteParams`),
    drawn as :func:`latte_ref.init_params` draws them (normal, standard deviation
    ``1 / sqrt(d_model)``), from PyTorch's generator. The output is that of
    :func:`latte_ref.latte_attention` on ``self.to_params()``.

    Parameters
    ----------
    d_model : int
        Model width; a multiple of ``n_heads``.
    n_latents : int
        Latents of all heads together (L = n_latents / n_heads per head).
    n_heads : int
    causal : bool
        Each token sees itself and the past (a decoder), or the whole sequence (an encoder).
    device, dtype : optional
        Of the parameters, as for any ``torch.nn`` layer.

    Examples
    --------
    >>> import torch
    >>> from latte_ref.layers.torch import LatteAttention
    >>> _ = torch.manual_seed(0)
    >>> layer = LatteAttention(64, 16, 4, causal=True)
    >>> layer
    LatteAttention(d_model=64, n_latents=16, n_heads=4, causal=True)
    >>> x = torch.randn(2, 10, 64)
    >>> layer(x).shape
    torch.Size([2, 10, 64])

    Streaming: the state after the first 6 tokens carries on to the last 4.

    >>> y_head, state = layer(x[:, :6], return_state=True)
    >>> y_tail = layer(x[:, 6:], state=state)
    >>> bool(torch.allclose(torch.cat([y_head, y_tail], 1), layer(x), atol=1e-5))
    True
    """

    def __init__(
        self,
        d_model: int,
        n_latents: int,
        n_heads: int,
        *,
        causal: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        # to_params() makes a LatteParams, which registers it with JAX once JAX is imported; done here,
        # not inside a torch.compile'd forward, where it would break the graph.
        register_jax_pytree()
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
        factory = {"device": device, "dtype": dtype}
        self.wq = nn.Parameter(torch.empty(d_model, n_latents, **factory))
        self.wk = nn.Parameter(torch.empty(d_model, n_latents, **factory))
        self.wv = nn.Parameter(torch.empty(d_model, d_model, **factory))
        self.wo = nn.Parameter(torch.empty(d_model, d_model, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights anew: normal, standard deviation ``1 / sqrt(d_model)`` (LeCun), as ``init_params``."""
        for w in (self.wq, self.wk, self.wv, self.wo):
            nn.init.normal_(w, std=1.0 / math.sqrt(self.d_model))

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        state: LatteState | None = None,
        return_state: bool = False,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> Any:
        """Latte over x: (B, T, d_model) -> (B, T, d_model), and the state after x when ``return_state``.

        Parameters
        ----------
        x : tensor, shape (B, T, d_model)
        mask : bool tensor, shape (B, T), optional
            True for a real token of x; padded tokens are no key and give 0 before the output projection.
        segment_ids : integer tensor, shape (B, T), optional
            The document of each token of a packed row, never decreasing along T: a token attends
            only to its own document (:func:`latte_ref.segment_ids_from_cu_seqlens` makes them).
        state : LatteState, optional
            ``causal=True`` only: the state after the tokens before x, as :func:`latte_ref.causal` streams.
        return_state : bool
            ``causal=True`` only: also return the state after x (to pass as ``state`` to the next call).
        context : tensor, shape (B, Tk, d_model), optional
            ``causal=False`` only: cross-attention, keys and values from ``context``, queries from x.
        context_mask : bool tensor, shape (B, Tk), optional
            With ``context``: True for a real context token.

        Returns
        -------
        y : tensor, shape (B, T, d_model)
            Or ``(y, state)`` when ``return_state``.
        """
        if isinstance(x, torch.Tensor) and x.dtype != self.wq.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x has dtype {x.dtype} but the layer's weights are {self.wq.dtype}: cast one to the other"
                " (layer.to(x.dtype), e.g. layer.double(), or x.to(layer.wq.dtype), e.g. x.float())"
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

    def to_params(self) -> LatteParams:
        """The layer's weights as :class:`latte_ref.LatteParams` of its parameters (gradients flow through them)."""
        weights = (self.wq, self.wk, self.wv, self.wo)
        if torch.compiler.is_compiling():  # no cache to read or fill while tracing: it would be guarded on
            return LatteParams(*weights, n_heads=self.n_heads)
        # The checks look at shapes, dtypes and devices alone: a decode loop pays for them once, not per token.
        signature = (self.n_heads, *((w.shape, w.dtype, w.device) for w in weights))
        if self.__dict__.get("_checked_signature") != signature:
            params = LatteParams(*weights, n_heads=self.n_heads)
            self.__dict__["_checked_signature"] = signature
            return params
        return LatteParams._unchecked(*weights, n_heads=self.n_heads)

    @classmethod
    def from_params(cls, params: LatteParams, *, causal: bool = False) -> LatteAttention:
        """A layer holding a copy of ``params`` (of any backend), on their device and in their dtype if torch.

        Examples
        --------
        >>> import latte_ref
        >>> from latte_ref.layers.torch import LatteAttention
        >>> layer = LatteAttention.from_params(latte_ref.init_params(16, 8, 4))
        >>> layer, layer.wq.dtype
        (LatteAttention(d_model=16, n_latents=8, n_heads=4, causal=False), torch.float64)
        """
        if not isinstance(params, LatteParams):
            raise TypeError(f"params must be a LatteParams, got {type(params).__name__}")
        weights = {name: _tensor(getattr(params, name)) for name in ("wq", "wk", "wv", "wo")}
        layer = cls(
            params.d_model,
            params.n_latents,
            params.n_heads,
            causal=causal,
            device=weights["wq"].device,
            dtype=weights["wq"].dtype,
        )
        with torch.no_grad():
            for name, w in weights.items():
                getattr(layer, name).copy_(w)
        return layer

    @classmethod
    def from_projections(
        cls, wq: Any, wk: Any, wv: Any, wo: Any, *, n_heads: int, causal: bool = False
    ) -> LatteAttention:
        """A layer holding copies of existing projections: ``nn.Linear`` modules or their weight tensors.

        Tensors are read in ``nn.Linear``'s orientation, (out_features, in_features): wq and wk
        (n_latents, d_model), wv and wo (d_model, d_model); the layer stores their transposes,
        (d_model, n_latents) and (d_model, d_model), as it computes ``x @ w``. LatteAttention has
        no biases: a Linear whose bias is not all zeros is a ``ValueError`` (use
        :class:`LatteMultiheadAttention`, which has them).

        Examples
        --------
        >>> from torch import nn
        >>> from latte_ref.layers.torch import LatteAttention
        >>> q, k, v, o = (nn.Linear(32, 32, bias=False) for _ in range(4))
        >>> LatteAttention.from_projections(q, k, v, o, n_heads=4, causal=True)
        LatteAttention(d_model=32, n_latents=32, n_heads=4, causal=True)
        """
        weights = {name: _projection(name, w) for name, w in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo))}
        n_latents, d_model = weights["wq"].shape
        expected = {"wq": (n_latents, d_model), "wk": (n_latents, d_model), "wv": (d_model, d_model)}
        expected["wo"] = (d_model, d_model)
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} (out_features, in_features) to go with wq"
                    f" {tuple(weights['wq'].shape)}, got {tuple(weights[name].shape)}"
                )
        layer = cls(d_model, n_latents, n_heads, causal=causal, device=weights["wq"].device, dtype=weights["wq"].dtype)
        with torch.no_grad():
            for name, w in weights.items():
                getattr(layer, name).copy_(w.T)
        return layer

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_latents={self.n_latents}, n_heads={self.n_heads}, causal={self.causal}"


def _tensor(w: Any) -> torch.Tensor:
    """A weight of any backend as a tensor, detached from any graph (NumPy, JAX and the rest via NumPy)."""
    if isinstance(w, torch.Tensor):
        return w.detach()
    return torch.from_numpy(np.array(w))


def _projection(name: str, w: Any) -> torch.Tensor:
    """The weight of an ``nn.Linear`` or a 2-d tensor, detached; a Linear's non-zero bias is a ``ValueError``."""
    if isinstance(w, nn.Linear):
        if w.bias is not None and bool(torch.any(w.bias != 0)):
            raise ValueError(
                f"{name} has a bias, which LatteAttention has not: use LatteMultiheadAttention, or a Linear without one"
            )
        w = w.weight
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        given = f"shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"{name} must be an nn.Linear or a 2-d tensor (out_features, in_features), got {given}")
    return w.detach()
