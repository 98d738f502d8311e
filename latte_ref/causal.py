"""Causal Latte, causal-parallel form: chunks of tokens in parallel, the state carried between chunks."""

from __future__ import annotations

from typing import Any

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
from .state import LatteState, check_state, init_state

__all__ = ["causal", "DEFAULT_CHUNK_SIZE"]

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
    q, k, v = (xp.astype(a, dtype) for a in (q, k, v))
    if state is None:
        state = init_state(q.shape[:-3], q.shape[-2], q.shape[-1], v.shape[-1], xp=xp, dtype=dtype, device=device_of(q))
    else:
        state = check_state(xp, state, q, v, dtype)
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)

    p_latent_given_query = softmax(xp, q, axis=-1)  # [..., T, H, L]
    n_tokens = q.shape[-3]
    outputs = []
    for start in range(0, n_tokens, chunk_size):
        chunk = slice(start, min(start + chunk_size, n_tokens))
        y_chunk, state = causal_chunk(xp, p_latent_given_query[..., chunk, :, :], k[..., chunk, :, :], v[..., chunk, :, :], state)
        outputs.append(y_chunk)
    y = xp.concat(outputs, axis=-3) if outputs else xp.zeros_like(v)
    y = xp.astype(mask_output(xp, mask, y), out_dtype)
    return (y, state) if return_state else y


def causal_chunk(xp: Any, p_latent_given_query: Array, k: Array, v: Array, state: LatteState) -> tuple[Array, LatteState]:
    """One chunk of C tokens against the state of everything before it.

    p_latent_given_query, k: (..., C, H, L) (k is -inf for padding); v: (..., C, H, D).
    For query t and key s <= t of the chunk, latent l::

        m_t       = max(m_prev, max_{s<=t} k_s)                running max, as in the recurrence
        w[t, s]   = exp(k_s - m_t)                              C x C weights per latent
        a_t       = a_prev exp(m_prev - m_t) + sum_s w[t, s]    normaliser
        y_t       = sum_l p(l|t) / a_t (S_prev exp(m_prev - m_t) + sum_s w[t, s] v_s)
    """
    n = k.shape[-3]
    k_hl = xp.moveaxis(k, -3, -1)  # [..., H, L, C]
    causal_pairs = _lower_triangle(xp, n, device=device_of(k))  # [C(t), C(s)]
    k_pairs = xp.where(causal_pairs, k_hl[..., None, :], -xp.inf)  # [..., H, L, C(t), C(s)]
    running_max = xp.maximum(xp.max(k_pairs, axis=-1), state.running_max[..., None])  # [..., H, L, C]
    shift = finite_or_zero(xp, running_max)
    weights = xp.exp(k_pairs - shift[..., None])  # [..., H, L, C, C]
    carried = xp.exp(state.running_max[..., None] - shift)  # [..., H, L, C] rescales the earlier state
    normaliser = state.normaliser[..., None] * carried + xp.sum(weights, axis=-1)  # [..., H, L, C]

    # Fold p(l | t) / a_t into the weights, then one matrix product per chunk for the values.
    p_hlt = xp.moveaxis(p_latent_given_query, -3, -1)  # [..., H, L, C]
    read = safe_divide(xp, p_hlt, normaliser)  # [..., H, L, C]
    attention = xp.sum(read[..., None] * weights, axis=-3)  # [..., H, C(t), C(s)]
    v_htd = xp.moveaxis(v, -3, -2)  # [..., H, C, D]
    y_now = causal_weighted_sum(xp, attention, v_htd)  # [..., H, C, D]; a nan value cannot reach earlier rows
    y_before = xp.moveaxis(read * carried, -1, -2) @ state.numerator  # [..., H, C, L] @ [..., H, L, D]
    y = xp.moveaxis(y_now + y_before, -2, -3)  # [..., C, H, D]

    last_weights = weights[..., -1, :]  # [..., H, L, C(s)]: the chunk's keys seen from its last token
    new_state = LatteState(
        running_max=running_max[..., -1],
        normaliser=normaliser[..., -1],
        numerator=state.numerator * carried[..., -1:] + last_weights @ v_htd,
    )
    return y, new_state


def _lower_triangle(xp: Any, n: int, *, device: Any) -> Array:
    positions = xp.arange(n, device=device)
    return positions[:, None] >= positions[None, :]
