"""The Latte layer with the authors' parameter layout: projections in, a form of Latte, projection out."""

from __future__ import annotations

from typing import Any, Literal

from ._array import Array, mask_output, namespace_of, resolve_namespace
from ._checks import check_flag, check_mask, same_device
from ._params import LatteParams, init_params, register_jax_pytree
from .bidirectional import bidirectional
from .causal import causal as causal_form
from .definition import definition
from .recurrent import recurrent, step
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

    One token (T = 1, no ``segment_ids``) is a decode step: it goes to :func:`latte_ref.step`,
    whose checks are paid once per signature, rather than to the chunked causal form, whose
    fixed cost per call is that of a whole chunk.
    """
    if not isinstance(params, LatteParams):
        raise TypeError(f"params must be a LatteParams, got {type(params).__name__}")
    xp = namespace_of(x=x, mask=mask, wq=params.wq)
    if x.ndim < 2 or x.shape[-1] != params.d_model:
        raise ValueError(f"x must have shape (..., T, d_model={params.d_model}), got {tuple(x.shape)}")
    heads = params.n_heads
    if x.shape[-2] == 1 and segment_ids is None:
        check_mask(xp, mask, x.shape[:-1])
        x_t = x[..., 0, :]  # [..., d_model]
        q_t = split_heads(xp, x_t @ params.wq, heads)  # [..., H, L]
        k_t = split_heads(xp, x_t @ params.wk, heads)
        v_t = split_heads(xp, x_t @ params.wv, heads)  # [..., H, D]
        y_t, state_after = step(q_t, k_t, v_t, state, mask_t=None if mask is None else mask[..., 0])
        return merge_heads(xp, y_t, params.wo)[..., None, :], state_after
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
