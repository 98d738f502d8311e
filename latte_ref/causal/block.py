"""A block of whole chunks at once: their running maxima, the states carried between them, and each chunk's form.

Chunks within the bound are factored (:mod:`latte_ref.causal.factored`); from a chunk's
first offending token on, the per-token form (:mod:`latte_ref.causal.exact`). Arrays whose
values cannot be read (``jax.jit``, ``torch.compile``) follow the same rule written with
``cond`` (:mod:`latte_ref.causal.traced`).
"""

from __future__ import annotations

from typing import Any

from .._array import Array, finite_or_zero
from .._dispatch import is_traced, one_graph
from ..state import LatteState
from .chunks import _any_but_chunks, _indices, _put_chunks, _take_chunks, _take_state
from .exact import causal_chunk
from .factored import _entry_max, _factored, _local_summaries, _out_of_bounds, factoring_bound
from .pieces import Pieces
from .scans import carry, chunk_maxima, last_piece, summaries
from .traced import causal_block_traced


def causal_block(
    xp: Any, q: Array, k: Array, v: Array, state: LatteState, *, chunk_size: int, starts: Array | None = None
) -> tuple[Array, LatteState]:
    """N = T / C whole chunks at once, after the history ``state``: y (..., T, H, D) and the state after.

    q, k: (..., T, H, L) (k is -inf for padding); v: (..., T, H, D); T a multiple of C;
    starts: (..., T) bool, True where a packed segment begins, or None.
    Per chunk n and latent l, with M_n the running max at the chunk's end and
    R_n = max(M_{n-1}, k_first) the running max at its first token::

        S_n  = d_n S_{n-1} + sum_s exp(k_s - M_n) v_s,   d_n = exp(M_{n-1} - M_n)   the state: a linear recurrence
        w_s  = exp(k_s - R_n)                                  one reference for the whole chunk
        a_t  = c_n a_{n-1} + sum_{s<=t} w_s,              c_n = exp(M_{n-1} - R_n)   normaliser of token t
        y_t  = sum_l p(l|t) / a_t (c_n S_{n-1} + sum_{s<=t} w_s v_s)

    R_n, unlike M_n, depends on no token after the chunk's first, so no output
    depends on a later token, not even in its last bit.

    With packed segments the same holds piece by piece (see :class:`Pieces`): every
    piece has its own reference, the running max at its first token; the sums over
    s <= t keep to t's piece; c_n reaches the first piece only; S_n holds the last
    piece only, and d_n = 0 where a segment starts, so the scan of the states starts
    again there (a segmented scan).
    """
    shape = tuple(k.shape)
    n_chunks = shape[-3] // chunk_size
    q, k = (xp.reshape(a, (*shape[:-3], n_chunks, chunk_size, *shape[-2:])) for a in (q, k))  # [..., N, C, H, L]
    v = xp.reshape(v, (*shape[:-3], n_chunks, chunk_size, v.shape[-2], v.shape[-1]))  # [..., N, C, H, D]
    pieces = None if starts is None else Pieces.of(xp, xp.reshape(starts, (*shape[:-3], n_chunks, chunk_size)))
    if is_traced(q):  # values cannot be read: the same rule, one `cond` per block, compiled as one graph
        y, after = one_graph(
            causal_block_traced, q, xp, q, k, v, state, static_argnums=(0,), chunk_size=chunk_size, pieces=pieces
        )
        return xp.reshape(y, (*shape[:-1], v.shape[-1])), after

    k_last, v_last = last_piece(xp, pieces, k, v)  # what reaches the state after each chunk
    running_max, max_before, decay = chunk_maxima(xp, k_last, state, pieces)  # M_n, M_{n-1}, d_n

    entry_max = _entry_max(xp, k, max_before, pieces)  # R: [..., N, 1, H, L], or per token [..., N, C, H, L]
    bound = factoring_bound(xp, k.dtype, chunk_size)
    reference = finite_or_zero(xp, entry_max)
    # Suspect chunks: a key more than `bound` above R, or a non-finite key or value (a nan compares False).
    # Flags are per batch element and chunk, so that one sequence's inputs never change another's path.
    # (A sum is non-finite when any term is, or when it overflows: then the chunk is only suspected needlessly.)
    if pieces is None:
        keys_in_bounds = xp.all(running_max <= entry_max[..., 0, :, :] + bound, axis=(-2, -1))
    else:  # pieces have references of their own: every key is checked against its own
        keys_in_bounds = ~xp.any(_out_of_bounds(xp, k, entry_max, bound), axis=(-3, -2, -1))
    suspect = ~keys_in_bounds | ~xp.isfinite(xp.sum(v, axis=(-3, -2, -1)))
    suspects = _indices(xp, _any_but_chunks(xp, suspect))
    k_in, v_in = k, v
    if suspects:  # leave the offending tokens out of the factored pass; the tokens after them are redone below
        k_in = xp.where(_out_of_bounds(xp, k, entry_max, bound), -xp.inf, k)
        v_in = xp.where(xp.isfinite(v), v, xp.zeros_like(v))
    weights = xp.exp(k_in - reference)  # [..., N, C, H, L], at most exp(bound)
    local = _local_summaries(xp, weights, v_in, reference[..., -1, :, :], running_max, pieces)
    # Suspects, and chunks whose summary overflowed (values near the dtype's largest), are summarised again.
    resummarise = suspect | ~xp.isfinite(xp.sum(local.numerator, axis=(-3, -2, -1)))  # [..., N]
    chunks = _indices(xp, _any_but_chunks(xp, resummarise))
    if chunks:
        (m_chunks, again) = _take_chunks(xp, chunks, running_max, resummarise[..., None, None], axis=-3)
        k_chunks, v_chunks = _take_chunks(xp, chunks, k_last, v_last)
        exact = summaries(xp, k_chunks, v_chunks, m_chunks)
        fast = _take_state(xp, chunks, local)
        local = LatteState(
            running_max,
            _put_chunks(xp, local.normaliser, chunks, xp.where(again, exact.normaliser, fast.normaliser), axis=-3),
            _put_chunks(xp, local.numerator, chunks, xp.where(again[..., None], exact.numerator, fast.numerator)),
        )
    before, after = carry(xp, state, max_before, decay, local, pieces, traced=False)

    # Only a piece that starts with no history (R = -inf) can hold tokens that have none, or one whose
    # offending keys were left out (the tokens after them are redone, but must not divide by 0 meanwhile).
    any_empty = bool(suspects) or not bool(xp.all(entry_max != -xp.inf))
    # c_n = exp(M_{n-1} - R_n) rescales the history for the first piece; 0 where the chunk begins a segment.
    history_max = max_before if pieces is None else xp.where(pieces.continues[..., 0, None, None], max_before, -xp.inf)
    carried = xp.exp(history_max - reference[..., 0, :, :])  # [..., N, H, L]
    y = _factored(xp, q, weights, v_in, before, carried, pieces, any_empty=any_empty)  # [..., N, C, H, D]
    if suspects:  # from a chunk's first offending token on, the per-token form
        q_s, k_s, v_s = _take_chunks(xp, suspects, q, k, v)
        (r_s,) = _take_chunks(xp, suspects, entry_max)
        token_out = xp.any(_out_of_bounds(xp, k_s, r_s, bound), axis=-1) | ~xp.all(xp.isfinite(v_s), axis=-1)
        from_first_out = xp.cumulative_sum(xp.astype(token_out, xp.int32), axis=-2) > 0  # [..., n, C, H]
        pieces_s = None if pieces is None else pieces.take(xp, suspects)
        per_token, _ = causal_chunk(xp, q_s, k_s, v_s, _take_state(xp, suspects, before), pieces=pieces_s)
        (factored,) = _take_chunks(xp, suspects, y)
        y = _put_chunks(xp, y, suspects, xp.where(from_first_out[..., None], per_token, factored))
    return xp.reshape(y, (*shape[:-1], v.shape[-1])), after
