"""Causal Latte, chunkwise-parallel form: every chunk at once, two matrix products each, exact for any logits.

The sequence is cut into N chunks of C tokens. Every key of a chunk is weighed
against one reference R, the running max at the chunk's first token:

    exp(k_s - m_t) = exp(k_s - R) · exp(R - m_t),

and the factor exp(R - m_t), which depends on the query alone, cancels between
numerator and normaliser. Each chunk then costs two matrix products
(queries·keysᵀ masked causally, then ·values) and L exponentials per token, as
the fastest linear-attention kernels do. The state before each chunk follows
from the chunks' own summaries by a linear recurrence, since the running maxima
at the chunks' ends are known in advance (a prefix max over the chunks' maxima).
R depends on no token after the chunk's first, so no output depends on a later
token, not even in its last bit.

The factored chunk is exact to rounding while no key rises more than a bound,
set by the dtype (:func:`factoring_bound`), above R. From the first token where
one does (a latent's logits jumping by tens inside the chunk), or where a key or
value is not finite, the chunk is computed again with the per-token form
:func:`causal_chunk`, which uses every token's own running max. On JAX arrays,
whose values cannot be read while they are traced, every chunk takes the
per-token form: a rule that does not depend on the data. (Dask arrays go to the
sequence-parallel graph, whose tasks run this function on NumPy blocks.)

Packed documents (``segment_ids``) cut chunks into pieces, one per document
(:class:`Pieces`): the products keep to a piece, each piece has its own reference,
and the recurrence over the chunks starts again where a document starts.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import is_dask_array, is_lazy_array, is_writeable_array

from ._array import (
    Array,
    _prepare_qkv,
    causal_weighted_sum,
    check_chunk_size,
    check_flag,
    device_of,
    finite_or_zero,
    mask_keys_and_values,
    mask_output,
    output_buffer,
    safe_divide,
    softmax,
    take_tokens,
    weighted_sum_where,
)
from ._dispatch import sequence_parallel
from .segments import check_segment_ids
from .state import LatteState, check_state, empty_state

__all__ = ["BLOCK_TOKENS", "DEFAULT_CHUNK_SIZE", "causal", "causal_chunk", "factoring_bound"]

DEFAULT_CHUNK_SIZE = 64
"""Tokens per chunk when ``chunk_size=None`` (see docs/performance.md for the measurement)."""

BLOCK_TOKENS = 4096
"""Tokens whose chunks are evaluated together; the state is carried between such blocks.

It bounds memory, and it keeps a block's arrays (a few MB) in cache: on NumPy, blocks
of 4,096 tokens ran 1.2 to 1.5 times as fast as blocks of 16,384 (docs/performance.md).
"""

TRACED_BLOCK_TOKENS = 2048
"""The same for traced and lazy arrays, whose per-token form holds C·L weights per token."""


def causal(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    chunk_size: int | None = None,
    state: LatteState | None = None,
    return_state: bool = False,
) -> Array | tuple[Array, LatteState]:
    r"""Causal latent attention in O(T·L·(C + D)), all chunks of C tokens at once.

    .. math::

        y_t = \sum_l p(l \mid t) \sum_{s \le t} p(s \mid l, t)\, v_s, \qquad
        p(s \mid l, t) = \frac{\exp k_{s,l}}{\sum_{s' \le t} \exp k_{s',l}}

    This is the recurrence of :func:`latte_ref.recurrent` evaluated a chunk at a
    time, with every chunk weighed against one reference (the running max at its
    first token) so that it becomes two matrix products; see the module docstring for the
    bound under which that is exact and for the per-token form used beyond it.
    Chunks are taken :data:`BLOCK_TOKENS` at a time, so memory is O(T·H·D) for the
    output plus O(BLOCK_TOKENS·H·(L + C + D)). Results do not depend on
    ``chunk_size`` beyond rounding.

    Parameters
    ----------
    q, k : array, shape (..., T, H, L)
        Latent logits of the queries and keys.
    v : array, shape (..., T, H, D)
        Values.
    mask : bool array, shape (..., T), optional
        True for a real token. Padded tokens leave the state unchanged and get output 0.
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row, never decreasing along T: a token attends only to
        the tokens of its own document (see :mod:`latte_ref.segments`).
    chunk_size : int, optional
        Tokens per chunk, C; :data:`DEFAULT_CHUNK_SIZE` when omitted. T need not be a multiple.
    state : LatteState, optional
        The state after the tokens that precede this call's (an empty history when omitted).
        With ``segment_ids``, it is the history of the call's first segment.
    return_state : bool
        Also return the state after the last token (which belongs to the last segment).

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

    Two documents packed in one row, of 60 and 40 tokens, and a stream cut inside the second:
    the state after the first call is the history of the second call's first segment.

    >>> ids = latte_ref.segment_ids_from_cu_seqlens([0, 60, 100])
    >>> packed = latte_ref.causal(q, k, v, segment_ids=ids)
    >>> bool(np.allclose(packed[60:], latte_ref.causal(q[60:], k[60:], v[60:])))
    True
    >>> head, state = latte_ref.causal(q[:80], k[:80], v[:80], segment_ids=ids[:80], return_state=True)
    >>> tail = latte_ref.causal(q[80:], k[80:], v[80:], segment_ids=ids[80:], state=state)
    >>> bool(np.allclose(np.concatenate([head, tail]), packed))
    True
    """
    xp, q, k, v, out_dtype, dtype = _prepare_qkv(q, k, v, mask)
    check_flag("return_state", return_state)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else check_chunk_size(chunk_size)
    if state is not None:
        state = check_state(xp, state, q, v, dtype)
    starts = None if segment_ids is None else check_segment_ids(xp, segment_ids, q.shape[:-2], like=q)
    if is_dask_array(q):
        # A sequence chunked along T: Dask gets a graph that is parallel along T (see docs/distributed.md).
        return sequence_parallel("dask").causal(
            q,
            k,
            v,
            mask=mask,
            segment_ids=segment_ids,
            chunk_size=chunk_size,
            state=state,
            return_state=return_state,
            out_dtype=out_dtype,
        )
    if state is None:
        state = empty_state(xp, q, v, dtype)
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)

    y = output_buffer(xp, v)
    pieces = []
    for block, size in _blocks(q.shape[-3], chunk_size, traced=is_lazy_array(q)):
        y_block, state = causal_block(
            xp,
            q[..., block, :, :],
            k[..., block, :, :],
            v[..., block, :, :],
            state,
            chunk_size=size,
            starts=None if starts is None else starts[..., block],
        )
        if y is None:
            pieces.append(y_block)
        else:
            y[..., block, :, :] = y_block
    if y is None:
        y = xp.concat(pieces, axis=-3) if pieces else xp.zeros_like(v)
    del pieces
    y = xp.astype(mask_output(xp, mask, y), out_dtype, copy=False)
    return (y, state) if return_state else y


def _blocks(n_tokens: int, chunk_size: int, *, traced: bool) -> list[tuple[slice, int]]:
    """(tokens, chunk size) of each block: whole chunks, :data:`BLOCK_TOKENS` at a time, then the remainder."""
    per_block = max(1, (TRACED_BLOCK_TOKENS if traced else BLOCK_TOKENS) // chunk_size) * chunk_size
    whole = n_tokens - n_tokens % chunk_size
    blocks = [(slice(start, min(start + per_block, whole)), chunk_size) for start in range(0, whole, per_block)]
    if whole < n_tokens:  # the last, shorter chunk is a block of its own
        blocks.append((slice(whole, n_tokens), n_tokens - whole))
    return blocks


def factoring_bound(xp: Any, dtype: Any) -> float:
    """How far a key may rise above its chunk's reference R for the factored chunk: g = -ln(tiny) + 3 ln(eps).

    That is 39.5 for float32 (and 16-bit inputs, which are computed in float32) and
    600.3 for float64. Below it every weight exp(k_s - R) is at most exp(g), about
    eps³ times the largest float, so the sums and products of weights over a chunk,
    its latents and values of any ordinary size keep a margin of 1/eps³ from
    overflow. Underflow needs no bound: R is at most the running max m_t, so the
    normaliser a_t is at least 1 and every weight that matters to token t is a
    normal number.
    """
    info = xp.finfo(dtype)
    return -math.log(float(info.smallest_normal)) + 3 * math.log(float(info.eps))


class Pieces(NamedTuple):
    """Where packed segments cut the chunks: a chunk splits into pieces, each of one segment.

    Tokens of different pieces never meet inside a chunk; only the first piece
    continues the history before the chunk, and only the last one reaches the state
    after it. Shapes, for N chunks of C tokens:

    reads      (..., N, C(t), C(s))  bool   s <= t, in t's piece
    first      (..., N, C)           int    where t's piece begins in the chunk
    continues  (..., N, C)           bool   t's piece began before the chunk
    in_last    (..., N, C)           bool   t is in the chunk's last piece
    restarts   (..., N)              bool   a segment starts in the chunk: the state before it is dropped
    """

    reads: Array
    first: Array
    continues: Array
    in_last: Array
    restarts: Array

    @classmethod
    def of(cls, xp: Any, starts: Array) -> Pieces:
        """The pieces of chunks from ``starts`` (..., N, C), True where a token begins a segment."""
        index = xp.cumulative_sum(xp.astype(starts, xp.int32), axis=-1)  # [..., N, C]: piece of each token
        lower = _lower_triangle(xp, starts.shape[-1], xp.bool, device_of(starts))
        positions = xp.arange(starts.shape[-1], device=device_of(starts))
        return cls(
            reads=(index[..., :, None] == index[..., None, :]) & lower,
            first=prefix_max(xp, xp.where(starts, positions, 0), axis=-1),
            continues=index == 0,
            in_last=index == index[..., -1:],
            restarts=index[..., -1] > 0,
        )

    def take(self, xp: Any, chunks: list[int]) -> Pieces:
        """The listed chunks' pieces."""
        (reads,) = _take_chunks(xp, chunks, self.reads, axis=-3)
        first, continues, in_last = _take_chunks(xp, chunks, self.first, self.continues, self.in_last, axis=-2)
        (restarts,) = _take_chunks(xp, chunks, self.restarts, axis=-1)
        return Pieces(reads, first, continues, in_last, restarts)


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
    traced = is_lazy_array(q)

    k_last, v_last = _last_piece(xp, pieces, k, v)  # what reaches the state after each chunk
    running_max, max_before, decay = _chunk_maxima(xp, k_last, state, pieces)  # M_n, M_{n-1}, d_n

    if traced:  # values unknown: every chunk by the per-token form
        summaries = _summaries(xp, k_last, v_last, running_max)
        before, after = _carry(xp, state, max_before, decay, summaries, pieces, traced=True)
        y, _ = causal_chunk(xp, q, k, v, before, pieces=pieces)
        return xp.reshape(y, (*shape[:-1], v.shape[-1])), after

    entry_max = _entry_max(xp, k, max_before, pieces)  # R: [..., N, 1, H, L], or per token [..., N, C, H, L]
    bound = factoring_bound(xp, k.dtype)
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
        exact = _summaries(xp, k_chunks, v_chunks, m_chunks)
        fast = _take_state(xp, chunks, local)
        local = LatteState(
            running_max,
            _put_chunks(xp, local.normaliser, chunks, xp.where(again, exact.normaliser, fast.normaliser), axis=-3),
            _put_chunks(xp, local.numerator, chunks, xp.where(again[..., None], exact.numerator, fast.numerator)),
        )
    before, after = _carry(xp, state, max_before, decay, local, pieces, traced=False)

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


def _last_piece(xp: Any, pieces: Pieces | None, k: Array, v: Array) -> tuple[Array, Array]:
    """k and v (..., N, C, H, ·) with the tokens outside each chunk's last piece left out (k = -inf, v = 0)."""
    if pieces is None:
        return k, v
    last = pieces.in_last[..., None, None]  # [..., N, C, 1, 1]
    return xp.where(last, k, -xp.inf), xp.where(last, v, xp.zeros_like(v))


def _chunk_maxima(xp: Any, k_last: Array, state: LatteState, pieces: Pieces | None) -> tuple[Array, Array, Array]:
    """M_n and M_{n-1}, the running maxima after and before each chunk, and the decay d_n: (..., N, H, L) each.

    k_last: the keys that reach the state after their chunk (the last piece's). M_n is a
    prefix max over the chunks, started again where a segment starts; d_n = exp(M_{n-1} - M_n),
    and 0 where the chunk's last piece does not continue the history (nothing before it reaches it).
    """
    chunk_max = xp.max(k_last, axis=-3)  # [..., N, H, L]
    history = state.running_max[..., None, :, :]
    if pieces is None:
        running_max = xp.maximum(prefix_max(xp, chunk_max, axis=-3), history)
    else:
        restarts = pieces.restarts[..., None, None]  # [..., N, 1, 1]
        running_max, started = segmented_prefix_max(xp, chunk_max, restarts, axis=-3)
        running_max = xp.where(started, running_max, xp.maximum(running_max, history))
    max_before = xp.concat([history, running_max[..., :-1, :, :]], axis=-3)
    reached = max_before if pieces is None else xp.where(restarts, -xp.inf, max_before)
    decay = xp.exp(reached - finite_or_zero(xp, running_max))  # <= 1, and 0 for an empty or dropped history
    return running_max, max_before, decay


def _entry_max(xp: Any, k: Array, max_before: Array, pieces: Pieces | None) -> Array:
    """R, the running max at the first token of each piece: (..., N, 1, H, L), or (..., N, C, H, L) per token.

    Without segments a chunk is one piece and R_n = max(M_{n-1}, k_first). With them, a
    piece that begins inside the chunk starts a segment, so its R is its first key.
    """
    if pieces is None:
        return xp.maximum(max_before, k[..., 0, :, :])[..., None, :, :]
    first_key = take_tokens(xp, k, pieces.first)  # [..., N, C, H, L]: each token's piece's first key
    history = xp.where(pieces.continues[..., None, None], max_before[..., None, :, :], -xp.inf)
    entry_max = xp.maximum(history, first_key)
    # A piece whose R is nan or +inf has none to use: as with R = -inf, each of its finite keys is then
    # out of bounds and its tokens take the per-token form, so its nan never meets another piece's rows.
    return xp.where(entry_max < xp.inf, entry_max, -xp.inf)


def _local_summaries(
    xp: Any, weights: Array, v: Array, last_reference: Array, running_max: Array, pieces: Pieces | None
) -> LatteState:
    """Each chunk's own state, in the frame of M_n, from the factored weights exp(k_s - R) of its last piece.

    weights (..., N, C, H, L); v (..., N, C, H, D); last_reference, the last piece's R, and
    running_max M_n: (..., N, H, L). The move from R to M_n is a factor exp(R - M_n) <= 1.
    """
    if pieces is not None:
        weights = weights * xp.astype(pieces.in_last, weights.dtype)[..., None, None]
    to_end = xp.exp(xp.minimum(last_reference - finite_or_zero(xp, running_max), 0.0))  # [..., N, H, L]
    w_hlc = xp.moveaxis(weights, -3, -1)  # [..., N, H, L, C]
    v_hcd = xp.moveaxis(v, -3, -2)  # [..., N, H, C, D]
    return LatteState(running_max, to_end * xp.sum(weights, axis=-3), to_end[..., None] * (w_hlc @ v_hcd))


def _out_of_bounds(xp: Any, k: Array, entry_max: Array, bound: float) -> Array:
    """Keys the factored form cannot take: non-finite or more than ``bound`` above R (padding, -inf, is fine).

    k: (..., N, C, H, L), entry_max R: (..., N, 1 or C, H, L) -> bool (..., N, C, H, L).
    """
    return (k != -xp.inf) & ~(k <= entry_max + bound)


def _factored(
    xp: Any,
    q: Array,
    weights: Array,
    v: Array,
    before: LatteState,
    carried: Array,
    pieces: Pieces | None,
    *,
    any_empty: bool = True,
) -> Array:
    """The factored chunks: two matrix products each, plus the carried state. y (..., N, C, H, D).

    weights: exp(k_s - R), (..., N, C, H, L), finite; carried: c_n, (..., N, H, L); ``before``
    holds the states before the chunks, (..., N, H, L[, D]). ``any_empty=False`` promises that
    every token has a history (a_t >= 1), which saves a pass.
    """
    chunk_size = weights.shape[-3]
    carried_tok = carried[..., None, :, :]  # [..., N, 1, H, L]
    guard = False
    if pieces is None:
        reads = _lower_triangle(xp, chunk_size, weights.dtype, device_of(weights))  # [C(t), C(s)]
    else:
        reads = xp.astype(pieces.reads, weights.dtype)  # [..., N, C(t), C(s)]
        carried_tok = carried_tok * xp.astype(pieces.continues, carried.dtype)[..., None, None]  # [..., N, C, H, L]
        # A factor of 0 keeps the history from the later pieces unless it is not finite (0 * nan):
        # then a `where` after the products does.
        guard = not bool(xp.all(xp.isfinite(before.numerator)) & xp.all(xp.isfinite(before.normaliser)))
    # a_t for every token: the carried normaliser plus a prefix sum of the weights, as a lower-triangular product
    prefix = xp.reshape(reads @ xp.reshape(weights, (*weights.shape[:-2], -1)), weights.shape)
    history = carried_tok * before.normaliser[..., None, :, :]
    normaliser = prefix + (_where_continued(xp, pieces, history, axis=-3) if guard else history)  # >= 1 or 0

    p_latent_given_query = softmax(xp, q, axis=-1)  # [..., N, C, H, L]
    # A token with no history (a_t = 0) meets only weights of 0, so dividing its p(l | t) by 1 is exact.
    if any_empty:
        normaliser = xp.where(normaliser == 0, xp.ones_like(normaliser), normaliser)
    read = p_latent_given_query / normaliser
    read_hcl = xp.moveaxis(read, -3, -2)  # [..., N, H, C(t), L]
    # Causal by a product with 0/1 rather than a where: every entry is finite here, so 0 * entry is exactly 0.
    scores = (read_hcl @ xp.moveaxis(weights, -3, -1)) * reads[..., None, :, :]  # [..., N, H, C(t), C(s)]
    from_history = (read_hcl * xp.moveaxis(carried_tok, -3, -2)) @ before.numerator  # [..., N, H, C, D]
    y = scores @ xp.moveaxis(v, -3, -2) + (
        _where_continued(xp, pieces, from_history, axis=-2) if guard else from_history
    )
    return xp.moveaxis(y, -2, -3)


def _where_continued(xp: Any, pieces: Pieces | None, x: Array, *, axis: int) -> Array:
    """x (..., N?, C, ...) with 0 for the tokens that do not continue the history (axis: the C axis).

    A ``where`` after the product rather than a factor of 0 before it: the history of
    another document may hold a nan, and 0 * nan is nan.
    """
    if pieces is None:
        return x
    if axis == -3:  # x: [..., C, H, X]
        continues = pieces.continues[..., None, None]
    else:  # x: [..., H, C, X]
        continues = pieces.continues[..., None, :, None]
    return xp.where(continues, x, xp.zeros_like(x))


def _summaries(xp: Any, k: Array, v: Array, running_max: Array) -> LatteState:
    """Each chunk's own state in the frame of M_n: k (..., N, C, H, L), v (..., N, C, H, D), M_n (..., N, H, L)."""
    weights = xp.exp(k - finite_or_zero(xp, running_max)[..., None, :, :])  # [..., N, C, H, L]
    return LatteState(running_max, xp.sum(weights, axis=-3), xp.moveaxis(weights, -3, -1) @ xp.moveaxis(v, -3, -2))


def _carry(
    xp: Any,
    state: LatteState,
    max_before: Array,
    decay: Array,
    local: LatteState,
    pieces: Pieces | None,
    *,
    traced: bool,
) -> tuple[LatteState, LatteState]:
    """The state before every chunk (each in its own running max's frame) and the state after the last.

    S_before[0] = state;  S_before[n+1] = d_n S_before[n] + local[n]  (and likewise the normaliser),
    or local[n] alone where a segment starts in chunk n: a ``where``, not d_n = 0, so that a nan
    in one document's state stays there.
    Eager arrays run the recurrence as a loop over the N chunks (cheap: two small
    products per chunk); traced ones as a log-depth doubling scan, which keeps the
    graph short. Both are exact: the running maxima, and with them d_n, are known.
    """
    running_max = local.running_max  # [..., N, H, L]
    restarts = None if pieces is None else pieces.restarts[..., None, None]  # [..., N, 1, 1]
    scan = _doubling_scan if traced else _loop_scan
    normaliser, numerator = scan(xp, decay, restarts, local.normaliser, local.numerator, state)
    before = LatteState(max_before, normaliser[..., :-1, :, :], numerator[..., :-1, :, :, :])
    after = LatteState(running_max[..., -1, :, :], normaliser[..., -1, :, :], numerator[..., -1, :, :, :])
    return before, after


def _loop_scan(
    xp: Any, decay: Array, restarts: Array | None, a_local: Array, s_local: Array, state: LatteState
) -> tuple[Array, Array]:
    """States at the N + 1 chunk boundaries by the recurrence, one chunk at a time: (..., N+1, H, L[, D])."""
    a, s = state.normaliser, state.numerator
    normalisers, numerators = [a], [s]
    for n in range(decay.shape[-3]):
        d = decay[..., n, :, :]  # [..., H, L]
        a = a * d + a_local[..., n, :, :]
        s = s * d[..., None] + s_local[..., n, :, :, :]
        if restarts is not None:
            r = restarts[..., n, :, :]  # [..., 1, 1]
            a = xp.where(r, a_local[..., n, :, :], a)
            s = xp.where(r[..., None], s_local[..., n, :, :, :], s)
        normalisers.append(a)
        numerators.append(s)
    return xp.stack(normalisers, axis=-3), xp.stack(numerators, axis=-4)


def _doubling_scan(
    xp: Any, decay: Array, restarts: Array | None, a_local: Array, s_local: Array, state: LatteState
) -> tuple[Array, Array]:
    """The same states by a Hillis-Steele scan of the maps x -> d x + b, composed in log2(N) rounds.

    With segments the maps are x -> b where a segment starts (r), else d x + b; composed,
    (r, d, b) after (r', d', b') is (r or r', d d', b if r else d b' + b).
    """
    d = decay  # [..., N, H, L]
    a, s = a_local, s_local
    r = None if restarts is None else xp.broadcast_to(restarts, d.shape)  # [..., N, H, L]
    reach, n = 1, decay.shape[-3]
    while reach < n:
        # Position i takes in the map ending at i - reach.
        a_then = d[..., reach:, :, :] * a[..., :-reach, :, :] + a[..., reach:, :, :]
        s_then = d[..., reach:, :, :, None] * s[..., :-reach, :, :, :] + s[..., reach:, :, :, :]
        if r is not None:
            r_here = r[..., reach:, :, :]
            a_then = xp.where(r_here, a[..., reach:, :, :], a_then)
            s_then = xp.where(r_here[..., None], s[..., reach:, :, :, :], s_then)
            r = xp.concat([r[..., :reach, :, :], r_here | r[..., :-reach, :, :]], axis=-3)
        a = xp.concat([a[..., :reach, :, :], a_then], axis=-3)
        s = xp.concat([s[..., :reach, :, :, :], s_then], axis=-4)
        d = xp.concat([d[..., :reach, :, :], d[..., reach:, :, :] * d[..., :-reach, :, :]], axis=-3)
        reach *= 2
    # Apply the composed maps to the incoming state; the first boundary is the state itself.
    a_all = d * state.normaliser[..., None, :, :] + a
    s_all = d[..., None] * state.numerator[..., None, :, :, :] + s
    if r is not None:
        a_all, s_all = xp.where(r, a, a_all), xp.where(r[..., None], s, s_all)
    a = xp.concat([state.normaliser[..., None, :, :], a_all], axis=-3)
    s = xp.concat([state.numerator[..., None, :, :, :], s_all], axis=-4)
    return a, s


def _any_but_chunks(xp: Any, flags: Array) -> Array:
    """``any`` over the batch axes of flags (..., N): (N,)."""
    return xp.any(xp.reshape(flags, (-1, flags.shape[-1])), axis=0)


def _indices(xp: Any, flags: Array) -> list[int]:
    """Positions of the True entries of a 1-d boolean array, as Python ints."""
    (where,) = xp.nonzero(flags)
    return [int(where[i]) for i in range(where.shape[0])]


def _take_chunks(xp: Any, chunks: list[int], *arrays: Array, axis: int = -4) -> list[Array]:
    """The listed chunks of each array, along its chunk axis (-4 for (..., N, C, H, X))."""
    index = xp.asarray(chunks, device=device_of(arrays[0]))
    return [xp.take(a, index, axis=axis) for a in arrays]


def _take_state(xp: Any, chunks: list[int], state: LatteState) -> LatteState:
    """The listed chunks of states (..., N, H, L[, D])."""
    (running_max, normaliser), (numerator,) = (
        _take_chunks(xp, chunks, *state[:2], axis=-3),
        _take_chunks(xp, chunks, state[2]),
    )
    return LatteState(running_max, normaliser, numerator)


def _put_chunks(xp: Any, a: Array, chunks: list[int], values: Array, *, axis: int = -4) -> Array:
    """``a`` with its listed chunks along ``axis`` replaced by those of ``values``, in order."""

    def at(position: int | slice) -> tuple[Any, ...]:
        return (Ellipsis, position, *((slice(None),) * (-axis - 1)))

    if is_writeable_array(a):
        for i, n in enumerate(chunks):
            a[at(n)] = values[at(i)]
        return a
    pieces = [a[at(slice(n, n + 1))] for n in range(a.shape[axis])]
    for i, n in enumerate(chunks):
        pieces[n] = values[at(slice(i, i + 1))]
    return xp.concat(pieces, axis=axis)


def _lower_triangle(xp: Any, n: int, dtype: Any, device: Any) -> Array:
    """(n, n) of ones on and below the diagonal: row t sums or keeps the keys s <= t."""
    positions = xp.arange(n, device=device)
    return xp.astype(positions[:, None] >= positions[None, :], dtype)


def causal_chunk(
    xp: Any, q: Array, k: Array, v: Array, state: LatteState, *, pieces: Pieces | None = None
) -> tuple[Array, LatteState]:
    """One chunk of C tokens against the state of everything before it, with every token's own running max.

    The per-token form: exact for any logits, at the cost of C·L exponentials per
    token. q, k: (..., C, H, L) (k is -inf for padding); v: (..., C, H, D).
    For query t and key s <= t of the chunk, latent l::

        m_t       = max(m_prev, max_{s<=t} k_s)                running max, as in the recurrence
        w[t, s]   = exp(k_s - m_t)                              C x C weights per latent
        a_t       = a_prev exp(m_prev - m_t) + sum_s w[t, s]    normaliser
        y_t       = sum_l p(l|t) / a_t (S_prev exp(m_prev - m_t) + sum_s w[t, s] v_s)

    With ``pieces`` (of chunks (..., C), see :class:`Pieces`), the sums and maxima over
    s <= t keep to t's piece, and only the first piece reads the earlier state.

    The pairwise weights are laid out (..., H, C(t), L, C(s)) so that the sum over
    keys runs along the contiguous last axis and the sum over latents is a
    batched (1 x L) @ (L x C) matrix product.
    """
    n = k.shape[-3]
    p_latent_given_query = xp.moveaxis(softmax(xp, q, axis=-1), -3, -2)  # [..., H, C, L]
    k_hls = xp.moveaxis(k, -3, -1)  # [..., H, L, C(s)]
    history_max = state.running_max[..., None, :]  # [..., H, 1, L]
    if pieces is None:
        visible = _key_is_visible(xp, n, device_of(k))  # [C(t), 1, C(s)]
        running_max = xp.maximum(prefix_max(xp, xp.moveaxis(k, -3, -2), axis=-2), history_max)  # [..., H, C, L]
    else:
        visible = pieces.reads[..., None, :, None, :]  # [..., 1, C(t), 1, C(s)]
        history_max = xp.where(pieces.continues[..., None, :, None], history_max, -xp.inf)  # [..., H, C, L]
        piece_max = xp.max(xp.where(visible, k_hls[..., None, :, :], -xp.inf), axis=-1)  # [..., H, C(t), L]
        running_max = xp.maximum(piece_max, history_max)
    shift = finite_or_zero(xp, running_max)
    # Mask the exponent, not the weight: exp(k_s - m_t) for s > t could overflow. A `where`, not the
    # addition of -inf, so that a nan key at s stays out of the rows t < s (nan + -inf is nan).
    exponent = k_hls[..., None, :, :] - shift[..., None]  # [..., H, C(t), L, C(s)]
    exponent = xp.where(visible, exponent, -xp.inf)
    weights = xp.exp(exponent)
    del exponent
    carried = xp.exp(history_max - shift)  # [..., H, C, L] rescales the earlier state (0 where it is not read)
    from_history = _where_continued(xp, pieces, state.normaliser[..., None, :] * carried, axis=-2)
    normaliser = from_history + xp.sum(weights, axis=-1)  # [..., H, C, L]

    read = safe_divide(xp, p_latent_given_query, normaliser)  # [..., H, C, L]: p(l | t) / a_t
    # [..., H, C, 1, L] @ [..., H, C, L, C] -> [..., H, C(t), C(s)]
    attention = (read[..., None, :] @ weights)[..., 0, :]
    v_hcd = xp.moveaxis(v, -3, -2)  # [..., H, C, D]
    # Not `attention @ v`: a nan value must not reach the rows that do not read it through 0 * nan.
    if pieces is None:
        within = causal_weighted_sum(xp, attention, v_hcd)
    else:
        within = weighted_sum_where(xp, attention, v_hcd, pieces.reads[..., None, :, :])
    y = within + _where_continued(xp, pieces, (read * carried) @ state.numerator, axis=-2)  # [..., H, C, D]

    history = state.numerator * carried[..., -1, :, None]  # [..., H, L, D]
    if pieces is not None:  # the last token's piece may begin in the chunk: then no history reaches the state
        history = xp.where(pieces.continues[..., -1, None, None, None], history, xp.zeros_like(history))
    new_state = LatteState(
        running_max=running_max[..., -1, :],
        normaliser=normaliser[..., -1, :],
        # The chunk's keys seen from its last token: [..., H, L, C(s)] @ [..., H, C, D].
        numerator=history + weights[..., -1, :, :] @ v_hcd,
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


def segmented_prefix_max(xp: Any, x: Array, restarts: Array, *, axis: int) -> tuple[Array, Array]:
    """:func:`prefix_max` started again wherever ``restarts`` is True: the max over x[j..i], j the last restart.

    restarts broadcasts against x. Also returns whether a restart came at or before each
    position (a max of pairs (restarted, x) that is associative, so doubling still works).
    """
    n = x.shape[axis]
    started = xp.broadcast_to(restarts, x.shape) if restarts.ndim == x.ndim else restarts
    reach = 1
    while reach < n:
        earlier_x, earlier_started = _take(x, 0, n - reach, axis), _take(started, 0, n - reach, axis)
        later_x, later_started = _take(x, reach, n, axis), _take(started, reach, n, axis)
        x = xp.concat(
            [_take(x, 0, reach, axis), xp.where(later_started, later_x, xp.maximum(later_x, earlier_x))], axis=axis
        )
        started = xp.concat([_take(started, 0, reach, axis), later_started | earlier_started], axis=axis)
        reach *= 2
    return x, started


def _take(x: Array, start: int, stop: int, axis: int) -> Array:
    index = (Ellipsis, slice(start, stop)) + (slice(None),) * (-axis - 1)
    return x[index]


def _key_is_visible(xp: Any, n: int, device: Any) -> Array:
    """(C(t), 1, C(s)): True where s <= t."""
    positions = xp.arange(n, device=device)
    return (positions[:, None] >= positions[None, :])[:, None, :]
