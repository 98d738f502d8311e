"""A block of chunks whose values cannot be read while it is computed (``jax.jit``, ``torch.compile``).

The eager block (:mod:`latte_ref.causal.block`) reads which chunks hold a key beyond the
bound and recomputes just those. A compiler cannot branch on values in Python, so here
the same rule is written with :func:`latte_ref._dispatch.cond`, one choice per block:

- every chunk is factored, with its offending keys and values left out (a ``where``, so
  the tokens before them are exact, as in the eager block);
- if any chunk's summary needs it, the block's summaries are recomputed in the frame of
  M_n, and kept only for those chunks;
- if any token is beyond the bound, the block's chunks are recomputed by the per-token
  form (:func:`latte_ref.causal.exact.causal_chunk`), kept from each chunk's first
  offending token on.

Both rules pick, for every token, the same exact formula as the eager block, so the
results agree to rounding compiled or not; only the work done for an offending block
differs (all its chunks rather than the offending ones).
"""

from __future__ import annotations

from typing import Any

from .._array import Array, finite_or_zero
from .._dispatch import cond
from ..state import LatteState
from .exact import causal_chunk
from .factored import _entry_max, _factored, _local_summaries, _out_of_bounds, factoring_bound
from .pieces import Pieces
from .scans import carry, chunk_maxima, last_piece, summaries


def causal_block_traced(
    xp: Any, q: Array, k: Array, v: Array, state: LatteState, *, chunk_size: int, pieces: Pieces | None
) -> tuple[Array, LatteState]:
    """N whole chunks at once, as :func:`latte_ref.causal.block.causal_block`, with no value read in Python.

    q, k: (..., N, C, H, L) (k is -inf for padding); v: (..., N, C, H, D). Returns y (..., N, C, H, D)
    and the state after the block.
    """
    k_last, v_last = last_piece(xp, pieces, k, v)  # what reaches the state after each chunk
    running_max, max_before, decay = chunk_maxima(xp, k_last, state, pieces)  # M_n, M_{n-1}, d_n
    entry_max = _entry_max(xp, k, max_before, pieces)  # R: [..., N, 1, H, L], or per token [..., N, C, H, L]
    bound = factoring_bound(xp, k.dtype, chunk_size)
    reference = finite_or_zero(xp, entry_max)

    out_of_bounds = _out_of_bounds(xp, k, entry_max, bound)  # [..., N, C, H, L]
    bad_value = ~xp.isfinite(v)  # [..., N, C, H, D]
    token_out = xp.any(out_of_bounds, axis=-1) | xp.any(bad_value, axis=-1)  # [..., N, C, H]
    # The offending keys and values left out of the factored pass; the tokens from them on are redone below.
    k_in = xp.where(out_of_bounds, -xp.inf, k)
    v_in = xp.where(bad_value, xp.zeros_like(v), v)
    weights = xp.exp(k_in - reference)  # [..., N, C, H, L], at most exp(bound)
    local = _local_summaries(xp, weights, v_in, reference[..., -1, :, :], running_max, pieces)
    # Chunks with an offending token, and those whose summary overflowed, are summarised again.
    again = xp.any(token_out, axis=(-2, -1)) | ~xp.isfinite(xp.sum(local.numerator, axis=(-3, -2, -1)))  # [..., N]

    # The branches read their operands only (no array from this scope: a compiler would make each such
    # array an operand too, with a gradient of a layout its backward may not take for a dynamic T).
    def resummarised(*arrays: Array) -> tuple[Array, Array]:
        k_last, v_last, running_max, _, _ = arrays
        exact = summaries(xp, k_last, v_last, running_max)
        return exact.normaliser, exact.numerator

    def not_needed(*arrays: Array) -> tuple[Array, Array]:
        return xp.zeros_like(arrays[3]), xp.zeros_like(arrays[4])

    # Each branch returns new arrays (none of its operands: torch.cond forbids aliases), zeros where
    # not needed; the `where` after it keeps the factored summaries of the chunks not chosen.
    normaliser, numerator = cond(
        xp.any(again), resummarised, not_needed, k_last, v_last, local.running_max, local.normaliser, local.numerator
    )
    chosen = again[..., None, None]  # [..., N, 1, 1]
    local = LatteState(
        local.running_max,
        xp.where(chosen, normaliser, local.normaliser),
        xp.where(chosen[..., None], numerator, local.numerator),
    )
    before, after = carry(xp, state, max_before, decay, local, pieces, traced=True)

    # c_n = exp(M_{n-1} - R_n) rescales the history for the first piece; 0 where the chunk begins a segment.
    history_max = max_before if pieces is None else xp.where(pieces.continues[..., 0, None, None], max_before, -xp.inf)
    carried = xp.exp(history_max - reference[..., 0, :, :])  # [..., N, H, L]
    y = _factored(xp, q, weights, v_in, before, carried, pieces, any_empty=True, guard=pieces is not None)

    def per_token(q: Array, k: Array, v: Array, *before: Array) -> Array:
        exact, _ = causal_chunk(xp, q, k, v, LatteState(*before), pieces=pieces)
        return exact

    def factored(q: Array, k: Array, v: Array, *before: Array) -> Array:
        return xp.zeros_like(v)  # y's shape

    exact = cond(xp.any(token_out), per_token, factored, q, k, v, *before)
    from_first_out = xp.cumulative_sum(xp.astype(token_out, xp.int32), axis=-2) > 0  # [..., N, C, H]
    return xp.where(from_first_out[..., None], exact, y), after
