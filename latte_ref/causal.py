"""Causal Latte, causal-parallel form: chunks of tokens in parallel, the state carried between chunks."""

from __future__ import annotations

from typing import Any

from array_api_compat import is_dask_array, is_writeable_array

from ._array import (
    Array,
    causal_weighted_sum,
    check_chunk_size,
    check_flag,
    check_mask,
    check_qkv,
    compute_dtype,
    device_of,
    finite_or_zero,
    mask_keys_and_values,
    mask_output,
    namespace_of,
    safe_divide,
    softmax,
)
from ._dispatch import sequence_parallel
from .state import LatteState, check_state, init_state

__all__ = ["DEFAULT_CHUNK_SIZE", "causal"]

DEFAULT_CHUNK_SIZE = 32
"""Tokens per chunk when ``chunk_size=None`` (see docs/performance.md for the measurement)."""


def causal(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    chunk_size: int | None = None,
    state: LatteState | None = None,
    return_state: bool = False,
) -> Array | tuple[Array, LatteState]:
    r"""Causal latent attention, evaluated chunk by chunk in O(T·L·(C + D)).

    .. math::

        y_t = \sum_l p(l \mid t) \sum_{s \le t} p(s \mid l, t)\, v_s, \qquad
        p(s \mid l, t) = \frac{\exp k_{s,l}}{\sum_{s' \le t} \exp k_{s',l}}

    This is the recurrence of :func:`latte_ref.recurrent` evaluated C tokens at a
    time: inside a chunk every pair (t, s <= t) is weighed at once with the same
    per-token running max ``m_t`` the recurrence uses, and the state
    (:class:`LatteState`) carries the tokens before the chunk. Memory is
    O(C²·H·L + T·H·D); results do not depend on ``chunk_size`` beyond rounding.

    Parameters
    ----------
    q, k : array, shape (..., T, H, L)
        Latent logits of the queries and keys.
    v : array, shape (..., T, H, D)
        Values.
    mask : bool array, shape (..., T), optional
        True for a real token. Padded tokens leave the state unchanged and get output 0.
    chunk_size : int, optional
        Tokens per chunk, C; :data:`DEFAULT_CHUNK_SIZE` when omitted. T need not be a multiple.
    state : LatteState, optional
        The state after the tokens that precede this call's (an empty history when omitted).
    return_state : bool
        Also return the state after the last token.

    Returns
    -------
    y : array, shape (..., T, H, D)
        In the promoted dtype of the inputs (16-bit inputs are computed in float32).
    state : LatteState
        Only with ``return_state=True``; in the computation dtype.

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 100, 2, 4))
    >>> y, state = latte_ref.causal(q, k, v, chunk_size=16, return_state=True)
    >>> bool(np.allclose(y, latte_ref.recurrent(q, k, v)))
    True
    """
    xp = namespace_of(q=q, k=k, v=v, mask=mask)
    check_qkv(q, k, v)
    check_mask(xp, mask, q.shape[:-2], like=q)
    check_flag("return_state", return_state)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else check_chunk_size(chunk_size)
    out_dtype, dtype = compute_dtype(xp, q, k, v)
    q, k, v = (xp.astype(a, dtype, copy=False) for a in (q, k, v))
    if state is not None:
        state = check_state(xp, state, q, v, dtype)
    if is_dask_array(q):
        # A sequence chunked along T: Dask gets a graph that is parallel along T (see docs/distributed.md).
        return sequence_parallel("dask").causal(
            q, k, v, mask=mask, chunk_size=chunk_size, state=state, return_state=return_state, out_dtype=out_dtype
        )
    if state is None:
        state = init_state(q.shape[:-3], q.shape[-2], q.shape[-1], v.shape[-1], xp=xp, dtype=dtype, device=device_of(q))
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)

    n_tokens = q.shape[-3]
    y = _output_buffer(xp, v)
    pieces = []
    for start in range(0, n_tokens, chunk_size):
        chunk = slice(start, min(start + chunk_size, n_tokens))
        y_chunk, state = causal_chunk(xp, q[..., chunk, :, :], k[..., chunk, :, :], v[..., chunk, :, :], state)
        if y is None:
            pieces.append(y_chunk)
        else:
            y[..., chunk, :, :] = y_chunk
    if y is None:
        y = xp.concat(pieces, axis=-3) if pieces else xp.zeros_like(v)
    del pieces
    y = xp.astype(mask_output(xp, mask, y), out_dtype, copy=False)
    return (y, state) if return_state else y


def _output_buffer(xp: Any, v: Array) -> Array | None:
    """An uninitialised (..., T, H, D) output to fill chunk by chunk, or None where arrays are immutable.

    Filling one buffer keeps the peak at one copy of the output; collecting the
    chunks and concatenating them (JAX, whose arrays are immutable, and Dask,
    whose graph would grow with every assignment) holds two.
    """
    if not is_writeable_array(v) or is_dask_array(v):
        return None
    return xp.empty(v.shape, dtype=v.dtype, device=device_of(v))


def causal_chunk(xp: Any, q: Array, k: Array, v: Array, state: LatteState) -> tuple[Array, LatteState]:
    """One chunk of C tokens against the state of everything before it.

    q, k: (..., C, H, L) (k is -inf for padding); v: (..., C, H, D).
    For query t and key s <= t of the chunk, latent l::

        m_t       = max(m_prev, max_{s<=t} k_s)                running max, as in the recurrence
        w[t, s]   = exp(k_s - m_t)                              C x C weights per latent
        a_t       = a_prev exp(m_prev - m_t) + sum_s w[t, s]    normaliser
        y_t       = sum_l p(l|t) / a_t (S_prev exp(m_prev - m_t) + sum_s w[t, s] v_s)

    The pairwise weights are laid out (..., H, C(t), L, C(s)) so that the sum over
    keys runs along the contiguous last axis and the sum over latents is a
    batched (1 x L) @ (L x C) matrix product.
    """
    n = k.shape[-3]
    p_latent_given_query = xp.moveaxis(softmax(xp, q, axis=-1), -3, -2)  # [..., H, C, L]
    k_htl = xp.moveaxis(k, -3, -2)  # [..., H, C(t), L]
    running_max = xp.maximum(prefix_max(xp, k_htl, axis=-2), state.running_max[..., None, :])  # [..., H, C, L]
    shift = finite_or_zero(xp, running_max)
    k_hls = xp.moveaxis(k, -3, -1)  # [..., H, L, C(s)]
    # Mask the exponent, not the weight: exp(k_s - m_t) for s > t could overflow. A `where`, not the
    # addition of -inf, so that a nan key at s stays out of the rows t < s (nan + -inf is nan).
    exponent = k_hls[..., None, :, :] - shift[..., None]  # [..., H, C(t), L, C(s)]
    exponent = xp.where(_key_is_visible(xp, n, device_of(k)), exponent, -xp.inf)
    weights = xp.exp(exponent)
    del exponent
    carried = xp.exp(state.running_max[..., None, :] - shift)  # [..., H, C, L] rescales the earlier state
    normaliser = state.normaliser[..., None, :] * carried + xp.sum(weights, axis=-1)  # [..., H, C, L]

    read = safe_divide(xp, p_latent_given_query, normaliser)  # [..., H, C, L]: p(l | t) / a_t
    # [..., H, C, 1, L] @ [..., H, C, L, C] -> [..., H, C(t), C(s)]
    attention = (read[..., None, :] @ weights)[..., 0, :]
    v_hcd = xp.moveaxis(v, -3, -2)  # [..., H, C, D]
    # causal_weighted_sum rather than `attention @ v`: a nan value must not reach earlier rows through 0 * nan.
    y = causal_weighted_sum(xp, attention, v_hcd) + (read * carried) @ state.numerator  # [..., H, C, D]

    new_state = LatteState(
        running_max=running_max[..., -1, :],
        normaliser=normaliser[..., -1, :],
        # The chunk's keys seen from its last token: [..., H, L, C(s)] @ [..., H, C, D].
        numerator=state.numerator * carried[..., -1, :, None] + weights[..., -1, :, :] @ v_hcd,
    )
    return xp.moveaxis(y, -2, -3), new_state


def prefix_max(xp: Any, x: Array, *, axis: int) -> Array:
    """``out[i] = max(x[0..i])`` along ``axis`` (negative), in log2(n) elementwise maxima.

    The Array API has no cumulative max; doubling the reach of each maximum
    (1, 2, 4, ... positions back) costs O(n log n) instead of the O(n²) of a
    masked pairwise max.
    """
    n = x.shape[axis]
    reach = 1
    while reach < n:
        head = _take(x, 0, reach, axis)
        tail = xp.maximum(_take(x, reach, n, axis), _take(x, 0, n - reach, axis))
        x = xp.concat([head, tail], axis=axis)
        reach *= 2
    return x


def _take(x: Array, start: int, stop: int, axis: int) -> Array:
    index = (Ellipsis, slice(start, stop)) + (slice(None),) * (-axis - 1)
    return x[index]


def _key_is_visible(xp: Any, n: int, device: Any) -> Array:
    """(C(t), 1, C(s)): True where s <= t."""
    positions = xp.arange(n, device=device)
    return (positions[:, None] >= positions[None, :])[:, None, :]
