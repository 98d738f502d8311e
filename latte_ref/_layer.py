"""The Latte layer with the authors' parameter layout: projections in, a form of Latte, projection out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import array_api_extra as xpx
import numpy as np

from ._array import (
    Array,
    check_dtype_request,
    check_flag,
    check_mask,
    check_positive_int,
    namespace_of,
    resolve_namespace,
    same_device,
)
from .bidirectional import bidirectional
from .causal import causal as causal_form
from .definition import definition
from .recurrent import recurrent
from .state import LatteState

__all__ = [
    "Form",
    "LatteParams",
    "check_form",
    "init_params",
    "latte_attention",
    "merge_heads",
    "resolve_namespace",
    "run_form",
    "split_heads",
]

Form = Literal["definition", "recurrent"]


@dataclass(frozen=True)
class LatteParams:
    """Weights of one Latte layer, laid out as in the authors' code.

    Attributes
    ----------
    wq, wk : array, shape (d_model, n_latents)
        Latent projections. The n_latents columns are split into ``n_heads`` equal
        groups: head h owns columns ``h*L : (h+1)*L`` with ``L = n_latents // n_heads``.
    wv, wo : array, shape (d_model, d_model)
        Value and output projections; head h owns value columns ``h*D : (h+1)*D``
        with ``D = d_model // n_heads``.
    n_heads : int
        H.
    """

    wq: Array
    wk: Array
    wv: Array
    wo: Array
    n_heads: int

    def __post_init__(self) -> None:
        check_positive_int("n_heads", self.n_heads)
        weights = {name: getattr(self, name) for name in ("wq", "wk", "wv", "wo")}
        xp = namespace_of(**weights)
        same_device(**weights)
        for name, w in weights.items():
            if w.ndim != 2:
                raise ValueError(f"{name} must be a matrix, got shape {tuple(w.shape)}")
            if not xp.isdtype(w.dtype, "real floating"):
                raise TypeError(f"{name} must be real floating-point, got dtype {w.dtype}")
        d_model, n_latents = self.wq.shape
        if tuple(self.wk.shape) != (d_model, n_latents):
            raise ValueError(f"wk must have the shape of wq {(d_model, n_latents)}, got {tuple(self.wk.shape)}")
        for name in ("wv", "wo"):
            if tuple(getattr(self, name).shape) != (d_model, d_model):
                raise ValueError(f"{name} must have shape {(d_model, d_model)}, got {tuple(getattr(self, name).shape)}")
        for name, size in (("n_latents", n_latents), ("d_model", d_model)):
            if size == 0 or size % self.n_heads:
                raise ValueError(f"{name} must be a positive multiple of n_heads={self.n_heads}, got {size}")

    @property
    def d_model(self) -> int:
        return int(self.wq.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.wq.shape[1])


def init_params(
    d_model: int,
    n_latents: int,
    n_heads: int,
    *,
    xp: Any = None,
    dtype: Any = None,
    device: Any = None,
    seed: int = 0,
) -> LatteParams:
    """Random layer weights, drawn with NumPy from ``seed`` and moved to ``xp``/``device``.

    Each matrix is normal with standard deviation ``1 / sqrt(d_model)`` (LeCun
    initialisation), so the same seed gives the same weights on every backend.

    Examples
    --------
    >>> import latte_ref
    >>> p = latte_ref.init_params(d_model=16, n_latents=8, n_heads=4)
    >>> p.wq.shape, p.wo.shape, p.n_heads
    ((16, 8), (16, 16), 4)
    """
    xp = resolve_namespace(xp)
    for name, size in (("d_model", d_model), ("n_latents", n_latents), ("n_heads", n_heads)):
        check_positive_int(name, size)
    for name, size in (("n_latents", n_latents), ("d_model", d_model)):
        if size % n_heads:
            raise ValueError(f"{name} must be a multiple of n_heads={n_heads}, got {size}")
    if dtype is None:
        dtype = xpx.default_dtype(xp, device=device)
    dtype = check_dtype_request(xp, dtype, device)
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(d_model)

    def draw(shape: tuple[int, int]) -> Array:
        return xp.asarray(rng.normal(scale=scale, size=shape), dtype=dtype, device=device)

    return LatteParams(
        wq=draw((d_model, n_latents)),
        wk=draw((d_model, n_latents)),
        wv=draw((d_model, d_model)),
        wo=draw((d_model, d_model)),
        n_heads=n_heads,
    )


def latte_attention(
    x: Array, params: LatteParams, *, causal: bool, mask: Array | None = None, form: Form | None = None
) -> Array:
    """The Latte layer: ``q, k, v = x @ wq, x @ wk, x @ wv`` split into heads, Latte per head, then ``@ wo``.

    Parameters
    ----------
    x : array, shape (..., T, d_model)
    params : LatteParams
    causal : bool
        Causal (each token sees itself and the past) or bidirectional.
    mask : bool array, shape (..., T), optional
        True for a real token; padded positions give 0 before the output projection.
    form : {None, "definition", "recurrent"}
        ``None`` runs the fast form (:func:`bidirectional` or :func:`causal`),
        ``"definition"`` the O(T²) oracle, ``"recurrent"`` the token-by-token scan (causal only).

    Returns
    -------
    y : array, shape (..., T, d_model)

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> p = latte_ref.init_params(d_model=16, n_latents=8, n_heads=4)
    >>> x = np.random.default_rng(0).normal(size=(2, 10, 16))
    >>> latte_ref.latte_attention(x, p, causal=True).shape
    (2, 10, 16)
    """
    if not isinstance(params, LatteParams):
        raise TypeError(f"params must be a LatteParams, got {type(params).__name__}")
    xp = namespace_of(x=x, mask=mask, wq=params.wq, wk=params.wk, wv=params.wv, wo=params.wo)
    same_device(x=x, mask=mask, wq=params.wq)
    check_flag("causal", causal)
    if x.ndim < 2 or x.shape[-1] != params.d_model:
        raise ValueError(f"x must have shape (..., T, d_model={params.d_model}), got {tuple(x.shape)}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must be a real floating-point array (float16 to float64), got dtype {x.dtype}")
    check_mask(xp, mask, x.shape[:-1])
    check_form(form, causal)

    heads = params.n_heads
    q = split_heads(xp, x @ params.wq, heads)  # [..., T, H, L]
    k = split_heads(xp, x @ params.wk, heads)  # [..., T, H, L]
    v = split_heads(xp, x @ params.wv, heads)  # [..., T, H, D]
    y, _ = run_form(q, k, v, causal=causal, form=form, mask=mask)
    return merge_heads(xp, y, params.wo)


def check_form(form: object, causal: bool) -> None:
    """``form`` is one the layer and the model run: None (the fast form), "definition" or "recurrent" (causal)."""
    if not isinstance(form, (str, type(None))) or form not in (None, "definition", "recurrent"):
        raise ValueError(f"form must be None, 'definition' or 'recurrent', got {form!r}")
    if form == "recurrent" and not causal:
        raise ValueError("form='recurrent' exists only for causal=True")


def run_form(
    q: Array, k: Array, v: Array, *, causal: bool, form: Form | None, mask: Array | None = None
) -> tuple[Array, LatteState | None]:
    """Latte in the chosen form: q, k (..., T, H, L), v (..., T, H, D) -> y (..., T, H, D) and a state.

    The state after the last token comes only from the fast causal form (which computes it
    anyway, so that a model can prefill in parallel); the other forms give ``None``.
    """
    state = None
    if form == "definition":
        y = definition(q, k, v, causal=causal, mask=mask)
    elif form == "recurrent":
        y = recurrent(q, k, v, mask=mask)
    elif causal:
        y, state = causal_form(q, k, v, mask=mask, return_state=True)
    else:
        y = bidirectional(q, k, v, mask=mask)
    return y, state


def split_heads(xp: Any, x: Array, n_heads: int) -> Array:
    """(..., H*F) -> (..., H, F): head h takes the h-th group of F columns."""
    return xp.reshape(x, (*x.shape[:-1], n_heads, x.shape[-1] // n_heads))


def merge_heads(xp: Any, y: Array, wo: Array) -> Array:
    """(..., H, D) -> (..., H*D) @ W_o: the heads side by side, then the output projection."""
    return xp.reshape(y, (*y.shape[:-2], y.shape[-2] * y.shape[-1])) @ wo
