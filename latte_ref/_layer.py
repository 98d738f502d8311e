"""The Latte layer with the authors' parameter layout: projections in, a form of Latte, projection out."""

from __future__ import annotations

import sys
from collections.abc import Mapping
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
    mask_output,
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
    "apply_layer",
    "check_form",
    "init_params",
    "latte_attention",
    "merge_heads",
    "register_jax_pytree",
    "resolve_namespace",
    "run_form",
    "split_heads",
    "stream",
]

Form = Literal["definition", "recurrent"]


@dataclass(frozen=True, repr=False)
class LatteParams:
    """Weights of one Latte layer, laid out as in the authors' code.

    Where JAX is imported, ``LatteParams`` is a JAX pytree: the four weights are its
    leaves and ``n_heads`` is static, so ``jax.grad``, ``jax.jit`` and ``jax.tree.map``
    take it as it is (see :func:`register_jax_pytree`).

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

    Examples
    --------
    >>> import latte_ref
    >>> latte_ref.init_params(d_model=16, n_latents=8, n_heads=4)
    LatteParams(d_model=16, n_latents=8, n_heads=4, wq/wk (16, 8), wv/wo (16, 16), float64)
    """

    wq: Array
    wk: Array
    wv: Array
    wo: Array
    n_heads: int

    def __post_init__(self) -> None:
        if not _registered and "jax" in sys.modules:  # JAX was imported after latte_ref: register now
            register_jax_pytree()
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

    def __repr__(self) -> str:
        # Shapes and dtype only: the weights of a real layer would fill the screen.
        dtypes = {str(w.dtype).removeprefix("torch.") for w in (self.wq, self.wk, self.wv, self.wo)}
        return (
            f"LatteParams(d_model={self.d_model}, n_latents={self.n_latents}, n_heads={self.n_heads},"
            f" wq/wk {tuple(self.wq.shape)}, wv/wo {tuple(self.wv.shape)}, {'/'.join(sorted(dtypes))})"
        )

    @classmethod
    def from_authors(cls, params: Mapping[str, Any], *, n_heads: int) -> LatteParams:
        """The weights of the authors' Flax modules (``BidLatte``, ``StableScanLatte``) as ``LatteParams``.

        Parameters
        ----------
        params : mapping
            The module's parameters, keys ``Wq``, ``Wk`` (d_model, n_latents), ``Wv`` and ``o_proj``
            (d_model, d_model); or the dict that ``module.init`` returns, which holds them under ``"params"``.
            The arrays are kept as they are (a JAX array stays one; nested lists become NumPy arrays).
        n_heads : int
            The module's ``n_heads``, which its parameters do not record.

        Returns
        -------
        LatteParams
            ``wq, wk, wv, wo = Wq, Wk, Wv, o_proj``: the authors' layout is this package's.

        Examples
        --------
        >>> import numpy as np, latte_ref
        >>> rng = np.random.default_rng(0)
        >>> authors = {"params": {"Wq": rng.normal(size=(16, 8)), "Wk": rng.normal(size=(16, 8)),
        ...                       "Wv": rng.normal(size=(16, 16)), "o_proj": rng.normal(size=(16, 16))}}
        >>> p = latte_ref.LatteParams.from_authors(authors, n_heads=4)
        >>> p.n_latents, p.n_heads, bool(np.all(p.wo == authors["params"]["o_proj"]))
        (8, 4, True)
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of the authors' parameter names, got {type(params).__name__}")
        if "params" in params and isinstance(params["params"], Mapping):
            params = params["params"]
        names = {"wq": "Wq", "wk": "Wk", "wv": "Wv", "wo": "o_proj"}
        missing = [key for key in names.values() if key not in params]
        if missing:
            raise KeyError(f"the authors' parameters need the keys Wq, Wk, Wv, o_proj; missing {missing}")
        weights = {ours: params[theirs] for ours, theirs in names.items()}
        weights = {
            k: w if hasattr(w, "__array_namespace__") or hasattr(w, "dtype") else np.asarray(w)
            for k, w in weights.items()
        }
        return cls(**weights, n_heads=n_heads)


_registered = False


def register_jax_pytree() -> None:
    """Make :class:`LatteParams` a JAX pytree (weights the leaves, ``n_heads`` static); idempotent.

    It uses the JAX that the caller has already imported, and does nothing where none is:
    it runs when ``latte_ref`` is imported after JAX, when a ``LatteParams`` is made after
    JAX was imported, and when :mod:`latte_ref.layers.flax` is imported. So the core never
    imports JAX, and every ``LatteParams`` that can meet a JAX transformation is registered.
    """
    global _registered
    jax = sys.modules.get("jax")
    if _registered or jax is None:
        return

    def flatten(p: LatteParams) -> tuple[tuple[tuple[Any, Array], ...], int]:
        return tuple((jax.tree_util.GetAttrKey(n), getattr(p, n)) for n in ("wq", "wk", "wv", "wo")), p.n_heads

    def unflatten(n_heads: int, leaves: Any) -> LatteParams:
        # Bypass the checks of __post_init__: JAX rebuilds pytrees with tracers and placeholders.
        p = object.__new__(LatteParams)
        for name, leaf in zip(("wq", "wk", "wv", "wo"), leaves, strict=True):
            object.__setattr__(p, name, leaf)
        object.__setattr__(p, "n_heads", n_heads)
        return p

    _registered = True
    jax.tree_util.register_pytree_with_keys(LatteParams, flatten, unflatten)


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
    x: Array,
    params: LatteParams,
    *,
    causal: bool,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    form: Form | None = None,
    context: Array | None = None,
    context_mask: Array | None = None,
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
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row, never decreasing along T: a token attends only to
        its own document's tokens (not with ``context``).
    form : {None, "definition", "recurrent"}
        ``None`` runs the fast form (:func:`bidirectional` or :func:`causal`),
        ``"definition"`` the O(T²) oracle, ``"recurrent"`` the token-by-token scan (causal only).
    context : array, shape (..., Tk, d_model), optional
        Cross-attention (``causal=False`` only): queries from x, keys and values from ``context``.
    context_mask : bool array, shape (..., Tk), optional
        With ``context``: True for a real context token; the others are no key.

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
    >>> memory = np.random.default_rng(1).normal(size=(2, 30, 16))  # cross-attention: 10 queries, 30 keys
    >>> latte_ref.latte_attention(x, p, causal=False, context=memory).shape
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
    if context is not None:
        if causal:
            raise ValueError("cross-attention (a context) exists only for causal=False")
        if segment_ids is not None:
            raise ValueError("segment_ids marks the documents of x; cross-attention (a context) takes none")
        return _cross_attention(xp, x, params, mask=mask, form=form, context=context, context_mask=context_mask)
    if context_mask is not None:
        raise ValueError("context_mask is given without a context")

    heads = params.n_heads
    q = split_heads(xp, x @ params.wq, heads)  # [..., T, H, L]
    k = split_heads(xp, x @ params.wk, heads)  # [..., T, H, L]
    v = split_heads(xp, x @ params.wv, heads)  # [..., T, H, D]
    y, _ = run_form(q, k, v, causal=causal, form=form, mask=mask, segment_ids=segment_ids)
    return merge_heads(xp, y, params.wo)


def _cross_attention(
    xp: Any, x: Array, params: LatteParams, *, mask: Array | None, form: Form | None, context: Array, context_mask: Any
) -> Array:
    """:func:`latte_attention` with queries from x and keys and values from ``context`` (checked here)."""
    xp = namespace_of(x=x, context=context, context_mask=context_mask)
    same_device(x=x, context=context, context_mask=context_mask)
    if context.ndim != x.ndim or context.shape[:-2] != x.shape[:-2] or context.shape[-1] != params.d_model:
        raise ValueError(
            f"context must have shape (..., Tk, d_model={params.d_model}) with the batch axes of x"
            f" {tuple(x.shape[:-2])}, got {tuple(context.shape)}"
        )
    check_mask(xp, context_mask, context.shape[:-1], name="context_mask")
    heads = params.n_heads
    q = split_heads(xp, x @ params.wq, heads)  # [..., Tq, H, L]
    k = split_heads(xp, context @ params.wk, heads)  # [..., Tk, H, L]
    v = split_heads(xp, context @ params.wv, heads)  # [..., Tk, H, D]
    if form == "definition":
        y = definition(q, k, v, causal=False, key_mask=context_mask)
    else:
        y = bidirectional(q, k, v, key_mask=context_mask)
    return merge_heads(xp, mask_output(xp, mask, y), params.wo)


def stream(
    x: Array,
    params: LatteParams,
    *,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    state: LatteState | None = None,
) -> tuple[Array, LatteState]:
    """The causal layer after the history ``state`` (None: an empty one): its output and the state after x.

    x: (..., T, d_model) -> y (..., T, d_model), as ``latte_attention(x, params, causal=True)`` on the
    whole sequence; the state is that of :func:`latte_ref.causal`, per head. The framework layers
    (:mod:`latte_ref.layers`) stream with it.
    """
    if not isinstance(params, LatteParams):
        raise TypeError(f"params must be a LatteParams, got {type(params).__name__}")
    xp = namespace_of(x=x, mask=mask, wq=params.wq)
    if x.ndim < 2 or x.shape[-1] != params.d_model:
        raise ValueError(f"x must have shape (..., T, d_model={params.d_model}), got {tuple(x.shape)}")
    heads = params.n_heads
    q = split_heads(xp, x @ params.wq, heads)  # [..., T, H, L]
    k = split_heads(xp, x @ params.wk, heads)
    v = split_heads(xp, x @ params.wv, heads)  # [..., T, H, D]
    y, state_after = causal_form(q, k, v, mask=mask, segment_ids=segment_ids, state=state, return_state=True)
    return merge_heads(xp, y, params.wo), state_after


def apply_layer(
    x: Array,
    params: LatteParams,
    *,
    causal: bool,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    state: LatteState | None = None,
    return_state: bool = False,
    context: Array | None = None,
    context_mask: Array | None = None,
) -> Array | tuple[Array, LatteState]:
    """What a framework layer's forward computes (:mod:`latte_ref.layers`): one of the three uses of the layer.

    With ``context`` (B, Tk, d_model): cross-attention (``causal=False``, no state). With
    ``state`` or ``return_state``: :func:`stream` (``causal=True``). Otherwise
    :func:`latte_attention`. Returns y (..., T, d_model), and the state after x when
    ``return_state``.
    """
    if context is not None or context_mask is not None:
        if causal or state is not None or return_state:
            raise ValueError("context (cross-attention) needs causal=False and no state")
        return latte_attention(
            x, params, causal=False, mask=mask, segment_ids=segment_ids, context=context, context_mask=context_mask
        )
    if state is None and not return_state:
        return latte_attention(x, params, causal=causal, mask=mask, segment_ids=segment_ids)
    if not causal:
        raise ValueError("state and return_state exist only for causal=True")
    y, state_after = stream(x, params, mask=mask, segment_ids=segment_ids, state=state)
    return (y, state_after) if return_state else y


def check_form(form: object, causal: bool) -> None:
    """``form`` is one the layer and the model run: None (the fast form), "definition" or "recurrent" (causal)."""
    if not isinstance(form, (str, type(None))) or form not in (None, "definition", "recurrent"):
        raise ValueError(f"form must be None, 'definition' or 'recurrent', got {form!r}")
    if form == "recurrent" and not causal:
        raise ValueError("form='recurrent' exists only for causal=True")


def run_form(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    form: Form | None,
    mask: Array | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, LatteState | None]:
    """Latte in the chosen form: q, k (..., T, H, L), v (..., T, H, D) -> y (..., T, H, D) and a state.

    The state after the last token comes only from the fast causal form (which computes it
    anyway, so that a model can prefill in parallel); the other forms give ``None``.
    """
    state = None
    if form == "definition":
        y = definition(q, k, v, causal=causal, mask=mask, segment_ids=segment_ids)
    elif form == "recurrent":
        y = recurrent(q, k, v, mask=mask, segment_ids=segment_ids)
    elif causal:
        y, state = causal_form(q, k, v, mask=mask, segment_ids=segment_ids, return_state=True)
    else:
        y = bidirectional(q, k, v, mask=mask, segment_ids=segment_ids)
    return y, state


def split_heads(xp: Any, x: Array, n_heads: int) -> Array:
    """(..., H*F) -> (..., H, F): head h takes the h-th group of F columns."""
    return xp.reshape(x, (*x.shape[:-1], n_heads, x.shape[-1] // n_heads))


def merge_heads(xp: Any, y: Array, wo: Array) -> Array:
    """(..., H, D) -> (..., H*D) @ W_o: the heads side by side, then the output projection."""
    return xp.reshape(y, (*y.shape[:-2], y.shape[-2] * y.shape[-1])) @ wo
