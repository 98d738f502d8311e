"""Causal Latte as a recurrence: constant time and memory per token."""

from __future__ import annotations

import math
from typing import Any

from ._array import (
    Array,
    last_axis_max,
    last_axis_sum,
    mask_keys_and_values,
    mask_output,
    read_latents,
    safe_divide,
    softmax,
    total,
)
from ._checks import _prepare_qkv, check_flag
from ._dispatch import in_exact_arithmetic, is_traced
from ._layout import repeat_kv_heads, swap_time_and_heads
from .segments import check_segment_ids
from .state import LatteState, check_state, empty_state, restart, warn_if_values_may_overflow

__all__ = ["recurrent", "step"]


@in_exact_arithmetic
def step(
    q_t: Array, k_t: Array, v_t: Array, state: LatteState | None, *, mask_t: Array | None = None
) -> tuple[Array, LatteState]:
    r"""One token of causal Latte: update the state with token t, then read it with p(l | t).

    .. math::

        m_t = \max(m_{t-1}, k_t), \quad
        a_t = a_{t-1} e^{m_{t-1} - m_t} + e^{k_t - m_t}, \quad
        S_t = S_{t-1} e^{m_{t-1} - m_t} + e^{k_t - m_t} v_t, \quad
        y_t = \sum_l p(l \mid t)\, S_{t,l} / a_{t,l}

    The cost does not depend on t: the whole history lives in the (H, L, D) state.

    ``step`` has no time axis: every axis before (H, L) is a batch axis. Given a whole
    sequence (B, T, H, L) and ``state=None`` it therefore computes B x T one-token
    sequences, each reading only itself, which no shape check can tell from a batch of
    shape (B, T). For a sequence, use :func:`recurrent` (token by token, carrying the
    state along T) or :func:`latte_ref.causal`; ``step`` is for one token at a time.

    Parameters
    ----------
    q_t, k_t : array, shape (..., H, L) and (..., H_kv, L)
        Latent logits of token t (no T axis, hence no ``layout`` argument). H_kv = H, or a divisor of
        H (grouped-query attention: query head h reads K/V head h // (H / H_kv)).
    v_t : array, shape (..., H_kv, D)
        Value of token t.
    state : LatteState or None
        The state after tokens < t; ``None`` is an empty history.
    mask_t : bool array, shape (...), optional
        False marks token t as padding: the state is returned unchanged and y_t is 0.

    Returns
    -------
    y_t : array, shape (..., H, D)
        In the promoted dtype of the inputs (16-bit inputs are computed in float32).
    state : LatteState
        The state after token t, in the computation dtype.

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 2, 4))   # H=2, L=D=4
    >>> y, state = latte_ref.step(q, k, v, None)
    >>> y.shape, state.numerator.shape
    ((2, 4), (2, 4, 4))
    """
    xp, q_t, k_t, v_t, state, out_dtype, eager = _checked_step_inputs(q_t, k_t, v_t, state, mask_t)
    if mask_t is not None:
        # A padded token is a key of weight exp(-inf) = 0: the update below leaves the state as it is.
        k_t, v_t = mask_keys_and_values(xp, mask_t, k_t, v_t)
    stepped = _finite_step(xp, q_t, k_t, v_t, state) if eager else None
    y_t, state = _step(xp, q_t, k_t, v_t, state) if stepped is None else stepped
    if mask_t is not None:
        y_t = xp.where(mask_t[..., None, None], y_t, xp.zeros_like(y_t))
    return (y_t if y_t.dtype == out_dtype else xp.astype(y_t, out_dtype)), state


# What the checks of `step` concluded, by the inputs' types, shapes, dtypes and devices: a decoder calls
# `step` once per token with arrays of one signature, and the checks read nothing else.
_CHECKED_STEPS: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}
_EAGER_MODULES = ("numpy", "torch", "cupy")  # whose arrays are never traced (a FakeTensor's module differs)


def _signature(*arrays: Array | None) -> tuple[Any, ...] | None:
    """A hashable signature of eager arrays (None where the first is of another kind, or is being traced).

    Only the first array's kind is asked about: a signature is cached once the full checks passed,
    which they do only for arrays of one namespace.
    """
    module = type(arrays[0]).__module__
    # A compiler tracing PyTorch code shows it plain tensors; a cache it reads then is one it guards on,
    # and filling it would recompile. NumPy arrays are never traced: no need to ask.
    if module not in _EAGER_MODULES or (module != "numpy" and is_traced(arrays[0])):
        return None
    return tuple(None if a is None else (type(a), a.shape, a.dtype, a.device) for a in arrays)


def _checked_step_inputs(
    q_t: Array, k_t: Array, v_t: Array, state: LatteState | None, mask_t: Array | None
) -> tuple[Any, Array, Array, Array, LatteState, Any, bool]:
    """``step``'s arguments checked and cast: (xp, q_t, k_t, v_t, state, out_dtype, eager).

    The checks look at types, shapes, dtypes and devices only, so for eager arrays their
    verdict is cached by that signature and a decode loop pays for them once. ``eager``: the
    arrays' values can be read now (not traced, not lazy), which lets ``_step`` choose its path.
    """
    fields = (None, None, None) if not isinstance(state, LatteState) else tuple(state)
    signature = _signature(q_t, k_t, v_t, mask_t, *fields)
    known = None if signature is None else _CHECKED_STEPS.get((state is None, signature))
    if known is not None:
        xp, out_dtype, dtype = known
        if q_t.dtype != dtype or k_t.dtype != dtype or v_t.dtype != dtype:
            q_t, k_t, v_t = (xp.astype(a, dtype) for a in (q_t, k_t, v_t))
        if k_t.shape[-2] != q_t.shape[-2]:
            k_t, v_t = repeat_kv_heads(xp, k_t, v_t, q_t.shape[-2])
        if state is None:
            state = empty_state(xp, q_t, v_t, dtype, time_axis=False)
        elif state.numerator.dtype != dtype:
            state = LatteState(*(xp.astype(a, dtype) for a in state))
        return xp, q_t, k_t, v_t, state, out_dtype, True
    xp, q_t, k_t, v_t, out_dtype, dtype = _prepare_qkv(q_t, k_t, v_t, mask_t, time_axis=False, mask_name="mask_t")
    if state is None:
        state = empty_state(xp, q_t, v_t, dtype, time_axis=False)
    else:
        state = check_state(xp, state, q_t, v_t, dtype, time_axis=False)
    if signature is not None:
        if len(_CHECKED_STEPS) >= 64:  # a few signatures in practice; never let the cache grow without bound
            _CHECKED_STEPS.clear()
        _CHECKED_STEPS[(state is None, signature)] = (xp, out_dtype, dtype)
    return xp, q_t, k_t, v_t, state, out_dtype, signature is not None


def _step(xp: Any, q_t: Array, k_t: Array, v_t: Array, state: LatteState) -> tuple[Array, LatteState]:
    """The update and read-out of :func:`step` on checked arrays of the computation dtype (k_t = -inf for padding).

    A short, fixed sequence of elementwise operations and one small product, as a decoder wants.
    """
    running_max = xp.maximum(state.running_max, k_t)  # [..., H, L]
    # The shift of the exponentials: the running max where it is finite; 0 for an empty history
    # (-inf), so that exp(-inf - 0) = 0; and nan once a +inf key came (documented: nan from then
    # on), set directly so that NumPy has no inf - inf to warn about.
    poisoned = running_max == xp.inf
    not_finite = xp.where(poisoned, xp.full_like(running_max, xp.nan), xp.zeros_like(running_max))
    shift = xp.where(xp.isfinite(running_max), running_max, not_finite)
    decay = xp.exp(state.running_max - shift)  # [..., H, L], <= 1
    weight = xp.exp(k_t - shift)
    normaliser = state.normaliser * decay + weight
    state = LatteState(
        running_max=running_max,
        normaliser=normaliser,
        numerator=state.numerator * decay[..., None] + weight[..., None] * v_t[..., None, :],  # [..., H, L, D]
    )
    p_latent_given_query = softmax(xp, q_t, axis=-1)  # [..., H, L]
    read = safe_divide(xp, p_latent_given_query, normaliser)  # p(l | t) / a_t
    return read_latents(xp, read, state.numerator), state  # [..., H, D]


def _finite_step(xp: Any, q_t: Array, k_t: Array, v_t: Array, state: LatteState) -> tuple[Array, LatteState] | None:
    """:func:`_step` in fewer operations when every number it meets is finite; ``None`` (nothing done) otherwise.

    With every running max m_t and every query's largest logit finite, the shift of the exponentials
    is m_t itself, each normaliser a_t is at least 1 (the term of the key that set m_t) and the
    softmax needs no guard for an all ``-inf`` row, so the ``where`` of each special value drops out:
    a decode step on eager arrays is about half the operations. The arithmetic left is that of
    ``_step``, in the same order, so the two give the same bits. One value is read to choose, so
    only eager arrays come here; a compiler traces ``_step``, whose guards it fuses into its loops.
    """
    running_max = xp.maximum(state.running_max, k_t)  # [..., H, L]
    query_max = last_axis_max(xp, q_t)  # [..., H, 1]
    # One read for the whole batch: the sum is finite only if every term is (a sum that overflows
    # merely sends a finite batch to the guarded path, which is exact too).
    if not math.isfinite(total(xp, running_max + query_max)):
        return None
    decay = xp.exp(state.running_max - running_max)  # [..., H, L], <= 1
    weight = xp.exp(k_t - running_max)
    normaliser = state.normaliser * decay + weight  # >= 1
    numerator = state.numerator * decay[..., None] + weight[..., None] * v_t[..., None, :]  # [..., H, L, D]
    query_weights = xp.exp(q_t - query_max)  # softmax's numerator, [..., H, L]
    p_latent_given_query = query_weights / last_axis_sum(xp, query_weights)  # [..., H, L]
    read = p_latent_given_query / normaliser  # p(l | t) / a_t, the same operations as _step's (the same bits)
    return read_latents(xp, read, numerator), LatteState(running_max, normaliser, numerator)


@in_exact_arithmetic
def recurrent(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    state: LatteState | None = None,
    return_state: bool = False,
    layout: str = "BTHD",
) -> Array | tuple[Array, LatteState]:
    """Causal latent attention as an explicit scan of :func:`step` over the T tokens.

    The slowest form and the most literal: it is what generation runs, one token
    at a time, and what :func:`latte_ref.causal` evaluates a chunk at a time.

    Parameters
    ----------
    q, k : array, shape (..., T, H, L)
    v : array, shape (..., T, H, D)
    mask : bool array, shape (..., T), optional
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row, never decreasing along T: where the id changes, the
        state starts again from an empty history.
    state : LatteState, optional
        The state after the preceding tokens (an empty history when omitted). With ``segment_ids``,
        the history of the call's first segment.
    return_state : bool
        Also return the state after the last token (of the last segment).
    layout : {"BTHD", "BHTD"}
        ``"BTHD"`` (default): q, k (..., T, H, L), v and y (..., T, H, D). ``"BHTD"``: head-first,
        (..., H, T, L) and (..., H, T, D), y too. k and v may have H_kv heads, a divisor of H
        (grouped-query attention: query head h reads K/V head h // (H / H_kv)).

    Returns
    -------
    y : array, shape (..., T, H, D), and the final state when ``return_state``.

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 7, 2, 4))
    >>> latte_ref.recurrent(q, k, v).shape
    (7, 2, 4)
    """
    xp, q, k, v, out_dtype, dtype = _prepare_qkv(q, k, v, mask, layout=layout, segment_ids=segment_ids, state=state)
    check_flag("return_state", return_state)
    if state is None:
        state = empty_state(xp, q, v, dtype)
    else:
        state = check_state(xp, state, q, v, dtype)
    starts = None if segment_ids is None else check_segment_ids(xp, segment_ids, q.shape[:-2], like=q)
    warn_if_values_may_overflow(xp, v, state_tokens=q.shape[-3])
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)
    # Checked once above: the loop runs the bare update, token by token.
    outputs = []
    for t in range(q.shape[-3]):
        if starts is not None and t > 0:
            state = restart(xp, state, starts[..., t])  # a new document forgets the one before
        y_t, state = _step(xp, q[..., t, :, :], k[..., t, :, :], v[..., t, :, :], state)
        outputs.append(y_t)
    y = xp.stack(outputs, axis=-3) if outputs else xp.zeros_like(v)
    y = swap_time_and_heads(xp, xp.astype(mask_output(xp, mask, y), out_dtype, copy=False), layout)
    return (y, state) if return_state else y
