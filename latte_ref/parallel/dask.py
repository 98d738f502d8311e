r"""Sequence-parallel Latte on Dask: a sequence chunked along T becomes a graph of per-block tasks.

:func:`latte_ref.causal` and :func:`latte_ref.bidirectional` hand Dask inputs to this
module (through :mod:`latte_ref._dispatch`) once they have checked them. With the sequence
in blocks ``0..n-1`` along T (the Dask chunks of T), and ``⊕`` the associative
:func:`latte_ref.combine`, the graph for every block of the batch axes and heads is

.. code-block:: text

    local_i  = summarise(k_i, v_i)                         n tasks, one block each
    before_i = state ⊕ local_0 ⊕ ... ⊕ local_(i-1)          a scan: at most ceil(log2(n + 1)) rounds
    y_i      = causal(q_i, k_i, v_i, state=before_i)       n tasks, one block and one state each

and, bidirectionally, ``total = local_0 ⊕ ... ⊕ local_(n-1)`` reduced as a binary tree
(depth ``ceil(log2 n)``) and ``y_i = read_out(softmax(q_i), total)``. A state holds
H·L·(D + 2) numbers, so no task holds more than one block of the sequence plus states,
and the n tasks of each pass are independent. Each block runs the core functions on
the arrays Dask holds (NumPy, or CuPy).

A block's output needs only the states of the blocks before it, so the scheduler can run
the two passes as one wave from the first block to the last: a block read for its state
is used for its outputs soon after, and memory stays at a few blocks per worker.

Packed rows (``segment_ids``, chunked like the mask) cut every block into pieces, one per
segment it touches. Pairs (a segment starts in the block, the state of its last piece)
merge associatively by :func:`latte_ref.state.segmented_combine`, so the same scan gives
``before_i``, the state of the segment that runs into block i, however many blocks it
spans; block i drops it where its first token begins a segment (its id differs from the
last id of the block before). Bidirectionally a second scan runs backwards over pairs (a
segment ends in the block, the state of its first piece) for ``after_i``; a block's first
piece reads ``before_i ⊕ piece ⊕ after_i`` (its last piece likewise), and the pieces wholly
inside it are read by the core. Each block's first and last ids are small tasks of their own.

Dask is imported inside the functions, so importing this module needs no Dask.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace, is_lazy_array

from .._array import Array, device_of, keys_taking_part, mask_keys_and_values
from ..bidirectional import bidirectional as bidirectional_form
from ..causal import causal as causal_form
from ..segments import segment_index, segment_starts
from ..state import LatteState, combine, empty_state, read_queries, restart, segmented_combine, summarise

if TYPE_CHECKING:
    import dask.array as da

__all__ = [
    "backward_piece",
    "bidirectional",
    "causal",
    "ends_at_last",
    "forward_piece",
    "inclusive_scan",
    "packed_read",
    "piece_state",
    "segmented_merge",
    "starts_at_first",
    "tree_reduce",
]

Delayed = Any


def causal(
    q: da.Array,
    k: da.Array,
    v: da.Array,
    *,
    mask: da.Array | None,
    chunk_size: int,
    state: LatteState | None,
    return_state: bool,
    out_dtype: Any,
    segment_ids: da.Array | None = None,
) -> da.Array | tuple[da.Array, LatteState]:
    """Causal Latte on Dask arrays chunked along T; called by :func:`latte_ref.causal`.

    q, k: (..., T, H, L), v: (..., T, H, D), already in the computation dtype; mask: (..., T) or None;
    state: the state before the first token (in the computation dtype) or None for an empty history;
    segment_ids: (..., T) integer or None; each run of equal ids is a segment (the ids are not read
    while the graph is built). With them, ``state`` is the history of the first segment.
    Returns lazy arrays: y (..., T, H, D) in ``out_dtype`` and, with ``return_state``, the final state.
    """
    import dask.array as da

    q, k, v, mask, segment_ids = _aligned(q, k, v, mask, segment_ids)
    blocks = _Blocks(q, k, v, mask, segment_ids=segment_ids)
    start = None if state is None else _state_blocks(state, q)
    y = np.empty(q.numblocks[:-1], dtype=object)  # one Dask array per block of the (..., T, H) grid
    final = np.empty(q.numblocks[:-3] + q.numblocks[-2:-1], dtype=object)
    for row, sequence in blocks.rows():
        row_start = None if start is None else start[row]
        if segment_ids is None:
            y_row, final[row] = _causal_row(blocks, sequence, row_start, chunk_size, out_dtype)
        else:
            y_row, final[row] = _packed_causal_row(blocks, sequence, row_start, chunk_size, out_dtype)
        for index, y_block in zip(sequence, y_row, strict=True):
            y[index] = blocks.as_array(y_block, index, v.shape[-1], out_dtype)
    y_array = da.block(y[..., None].tolist())  # D in one piece
    if not return_state:
        return y_array
    return y_array, _assemble_state(final, q, v.shape[-1])


def _causal_row(
    blocks: _Blocks, sequence: list[tuple[int, ...]], start: Delayed | None, chunk_size: int, out_dtype: Any
) -> tuple[list[Delayed], Delayed]:
    """One row of blocks along T: the delayed outputs of each block and the state after the last."""
    local = [_task(_local_state)(*blocks.keys_and_values(index)) for index in sequence]
    if start is None:
        scanned = inclusive_scan(local)
        before = [None, *scanned[:-1]]
    else:
        scanned = inclusive_scan([start, *local])
        before = scanned[:-1]
    y = []
    for index, state_before in zip(sequence, before, strict=True):
        q_block, mask_block = blocks.queries(index)
        k_block, v_block, _ = blocks.keys_and_values(index)
        y.append(_task(_causal_block)(q_block, k_block, v_block, mask_block, state_before, chunk_size, out_dtype))
    return y, scanned[-1]


def _packed_causal_row(
    blocks: _Blocks, sequence: list[tuple[int, ...]], start: Delayed | None, chunk_size: int, out_dtype: Any
) -> tuple[list[Delayed], Delayed]:
    """:func:`_causal_row` for packed rows: a segmented scan of (restarts, last piece) pairs.

    ``before_i`` is the state, up to block i, of the segment of block i-1's last token;
    block i drops it when its first token begins a segment.
    """
    local = [
        _task(_forward_piece)(*blocks.keys_and_values(index), blocks.ids(index), blocks.previous_last(index))
        for index in sequence
    ]
    if start is None:
        scanned = inclusive_scan(local, merge=_segmented_merge)
        before = [None, *scanned[:-1]]
    else:
        scanned = inclusive_scan([_task(_continuing)(start), *local], merge=_segmented_merge)
        before = scanned[:-1]
    y = []
    for index, pair_before in zip(sequence, before, strict=True):
        q_block, mask_block = blocks.queries(index)
        k_block, v_block, _ = blocks.keys_and_values(index)
        ids, previous_last = blocks.ids(index), blocks.previous_last(index)
        y.append(
            _task(_packed_causal_block)(
                q_block, k_block, v_block, mask_block, ids, previous_last, pair_before, chunk_size, out_dtype
            )
        )
    return y, _task(_state_of)(scanned[-1])


def bidirectional(
    q: da.Array,
    k: da.Array,
    v: da.Array,
    *,
    mask: da.Array | None,
    out_dtype: Any,
    key_mask: da.Array | None = None,
    segment_ids: da.Array | None = None,
) -> da.Array:
    """Bidirectional Latte on Dask arrays chunked along T; called by :func:`latte_ref.bidirectional`.

    Shapes and dtypes as for :func:`causal`; key_mask: (..., T) or None, the keys that take part
    (only with ``segment_ids``). Returns a lazy y (..., T, H, D) in ``out_dtype``.
    """
    import dask.array as da

    q, k, v, mask, segment_ids = _aligned(q, k, v, mask, segment_ids)
    blocks = _Blocks(q, k, v, mask, segment_ids=segment_ids, key_mask=_lead(key_mask, q))
    y = np.empty(q.numblocks[:-1], dtype=object)
    for _, sequence in blocks.rows():
        y_row = (
            _bidirectional_row(blocks, sequence, out_dtype)
            if segment_ids is None
            else _packed_row(blocks, sequence, out_dtype)
        )
        for index, y_block in zip(sequence, y_row, strict=True):
            y[index] = blocks.as_array(y_block, index, v.shape[-1], out_dtype)
    return da.block(y[..., None].tolist())


def _bidirectional_row(blocks: _Blocks, sequence: list[tuple[int, ...]], out_dtype: Any) -> list[Delayed]:
    """One row of blocks along T: every block's queries read against the whole row's state."""
    total = tree_reduce([_task(_local_state)(*blocks.keys_and_values(index)) for index in sequence])
    return [_task(_read_block)(*blocks.queries(index), total, out_dtype) for index in sequence]


def _packed_row(blocks: _Blocks, sequence: list[tuple[int, ...]], out_dtype: Any) -> list[Delayed]:
    """:func:`_bidirectional_row` for packed rows: a segmented scan forwards and one backwards.

    Forwards, pairs (restarts, last piece) give ``before_i``, the state up to block i of the
    segment of block i-1's last token; backwards, pairs (a segment ends in the block, first
    piece) give ``after_i``, the state from block i+1 on of the segment of block i+1's first
    token. Each block completes its first and last pieces with them.
    """
    forward, backward = [], []
    for index in sequence:
        k_block, v_block, _ = blocks.keys_and_values(index)
        keys, ids = blocks.keys(index), blocks.ids(index)
        forward.append(_task(_forward_piece)(k_block, v_block, keys, ids, blocks.previous_last(index)))
        backward.append(_task(_backward_piece)(k_block, v_block, keys, ids, blocks.next_first(index)))
    before = [None, *inclusive_scan(forward, merge=_segmented_merge)[:-1]]
    after = [*inclusive_scan(backward[::-1], merge=_segmented_merge)[::-1][1:], None]
    y = []
    for index, pair_before, pair_after in zip(sequence, before, after, strict=True):
        k_block, v_block, _ = blocks.keys_and_values(index)
        q_block, mask_block = blocks.queries(index)
        neighbours = (blocks.previous_last(index), blocks.next_first(index))
        y.append(
            _task(_packed_read_block)(
                q_block,
                k_block,
                v_block,
                mask_block,
                blocks.key_mask(index),
                blocks.ids(index),
                neighbours,
                (pair_before, pair_after),
                out_dtype,
            )
        )
    return y


def inclusive_scan(states: list[Delayed], merge: Callable[[Any, Any], Any] | None = None) -> list[Delayed]:
    """``out[i] = states[0] ⊕ ... ⊕ states[i]`` as delayed merges, in ceil(log2 n) rounds.

    Recursive doubling (Hillis and Steele): after the round of reach r, element i holds
    the merge of the up to 2r elements ending at i. Every round's merges are independent,
    so the depth of the graph grows with log2 n; it does O(n log n) merges of small states.
    ``merge`` is the associative ⊕ of two elements, :func:`latte_ref.combine` when omitted.
    """
    merge_task = _task(_combine if merge is None else merge)
    reach = 1
    while reach < len(states):
        states = states[:reach] + [merge_task(states[i - reach], states[i]) for i in range(reach, len(states))]
        reach *= 2
    return states


def tree_reduce(states: list[Delayed]) -> Delayed:
    """``states[0] ⊕ ... ⊕ states[n-1]`` as a binary tree of delayed merges, of depth ceil(log2 n)."""
    while len(states) > 1:
        pairs = [_task(_combine)(states[i], states[i + 1]) for i in range(0, len(states) - 1, 2)]
        states = pairs + states[len(pairs) * 2 :]
    return states[0]


# -- per-block tasks: the core functions on the arrays inside one block ---------------------------------------------


@cache
def _task(fn: Callable[..., Any]) -> Any:
    """``fn`` as a pure Dask task (its key a hash of its arguments); Dask is imported on first use.

    Cached: each function is wrapped once, as a decorator at import would, not once per block.
    """
    import dask

    return dask.delayed(fn, pure=True)


def _local_state(k: Any, v: Any, mask: Any) -> LatteState:
    """The state of one block's tokens alone: k (..., C, H, L), v (..., C, H, D), mask (..., C) or None."""
    xp = array_namespace(k, v)
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)
    return summarise(xp, k, v)


def _combine(earlier: LatteState, later: LatteState) -> LatteState:
    return combine(earlier, later)


def _causal_block(q: Any, k: Any, v: Any, mask: Any, state: LatteState | None, chunk_size: int, dtype: Any) -> Any:
    """One block's outputs (..., C, H, D), given the state of every token before it."""
    y = causal_form(q, k, v, mask=mask, chunk_size=chunk_size, state=state)
    return array_namespace(y).astype(y, dtype)


def _read_block(q: Any, mask: Any, total: LatteState, dtype: Any) -> Any:
    """One block's bidirectional outputs: its queries read against the whole sequence's state."""
    xp = array_namespace(q)
    return xp.astype(read_queries(xp, q, mask, total), dtype)


# -- packed rows: the pieces of a block ------------------------------------------------------------------------------
#
# A block of a packed row splits into pieces, one per segment it touches. Its first piece may
# continue a segment from the blocks before it, its last piece one into the blocks after it; the
# pieces between lie wholly inside the block. Within a block, ``segment_starts`` of its ids gives
# the starts after its first token; whether the first token starts a segment, and whether the last
# one ends one, takes the neighbouring blocks' ids. These functions take the namespace, and the JAX
# path uses them too.

Pair = tuple[Any, LatteState]
"""(restarts, state): whether a segment starts in a stretch of tokens, and the state of its last segment."""


def starts_at_first(xp: Any, ids: Array, previous_last: Array | None) -> Array:
    """(...) bool: the block's first token begins a segment, its id differing from ``previous_last`` (...).

    False where there is no token before (``previous_last`` None) or the block is empty.
    """
    if previous_last is None or ids.shape[-1] == 0:
        return xp.zeros(ids.shape[:-1], dtype=xp.bool, device=device_of(ids))
    return ids[..., 0] != previous_last


def ends_at_last(xp: Any, ids: Array, next_first: Array | None) -> Array:
    """(...) bool: a segment ends at the block's last token, the next id ``next_first`` (...) differing."""
    if next_first is None or ids.shape[-1] == 0:
        return xp.zeros(ids.shape[:-1], dtype=xp.bool, device=device_of(ids))
    return ids[..., -1] != next_first


def piece_state(xp: Any, k: Array, v: Array, keys: Array | None, piece: Array) -> LatteState:
    """The state of the keys of one piece: k (..., C, H, L), v (..., C, H, D), keys and piece (..., C) bool."""
    return summarise(xp, *mask_keys_and_values(xp, piece if keys is None else piece & keys, k, v))


def forward_piece(xp: Any, k: Array, v: Array, keys: Array | None, ids: Array, starts_here: Array) -> Pair:
    """The block's pair for the forward segmented scan: (a segment starts in it, the state of its last piece).

    k (..., C, H, L), v (..., C, H, D); keys, ids (..., C); starts_here (...), whether the block's
    first token begins a segment (:func:`starts_at_first`).
    """
    index = segment_index(xp, segment_starts(xp, ids))  # [..., C]: the piece of each token
    restarts = starts_here | xp.any(index > 0, axis=-1)
    return restarts, piece_state(xp, k, v, keys, index == index[..., -1:])


def backward_piece(xp: Any, k: Array, v: Array, keys: Array | None, ids: Array, ends_here: Array) -> Pair:
    """The block's pair for the backward segmented scan: (a segment ends in it, the state of its first piece).

    As :func:`forward_piece`, with ends_here (...), whether a segment ends at the block's last token.
    """
    index = segment_index(xp, segment_starts(xp, ids))
    return ends_here | xp.any(index > 0, axis=-1), piece_state(xp, k, v, keys, index == 0)


def segmented_merge(earlier: Pair, later: Pair) -> Pair:
    """The associative merge of (restarts, state) pairs: :func:`latte_ref.state.segmented_combine`."""
    return earlier[0] | later[0], segmented_combine(earlier[1], later[1], later[0])


def packed_read(
    xp: Any,
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    key_mask: Array | None,
    ids: Array,
    before: LatteState,
    after: LatteState,
) -> Array:
    """Bidirectional outputs of one block of a packed row, given what its segments hold outside it.

    q, k (..., C, H, L), v (..., C, H, D); mask, key_mask, ids (..., C). ``before`` is the state of
    the first piece's segment before the block, ``after`` that of the last piece's segment after it
    (empty where the segment begins or ends at the block's edge). The first and last pieces read
    their whole segments, ``before ⊕ piece ⊕ after`` (one piece: both); the pieces between are
    segments of their own, read by the core. Returns y (..., C, H, D).
    """
    keys = keys_taking_part(mask, key_mask)
    index = segment_index(xp, segment_starts(xp, ids))
    first, last = index == 0, index == index[..., -1:]
    one_piece = ~xp.any(index > 0, axis=-1)  # [...]
    whole_first = combine(combine(before, piece_state(xp, k, v, keys, first)), restart(xp, after, ~one_piece))
    whole_last = combine(combine(restart(xp, before, ~one_piece), piece_state(xp, k, v, keys, last)), after)
    y = xp.where(first[..., None, None], read_queries(xp, q, mask, whole_first), read_queries(xp, q, mask, whole_last))
    middle = ~first & ~last
    if is_lazy_array(middle) or bool(xp.any(middle)):
        y_middle = bidirectional_form(q, k, v, mask=mask, key_mask=key_mask, segment_ids=index)
        y = xp.where(middle[..., None, None], xp.astype(y_middle, y.dtype), y)
    return y


def _forward_piece(k: Any, v: Any, keys: Any, ids: Any, previous_last: Any) -> Pair:
    xp = array_namespace(k, v)
    return forward_piece(xp, k, v, keys, ids, starts_at_first(xp, ids, previous_last))


def _backward_piece(k: Any, v: Any, keys: Any, ids: Any, next_first: Any) -> Pair:
    xp = array_namespace(k, v)
    return backward_piece(xp, k, v, keys, ids, ends_at_last(xp, ids, next_first))


def _segmented_merge(earlier: Pair, later: Pair) -> Pair:
    return segmented_merge(earlier, later)


def _continuing(state: LatteState) -> Pair:
    """A caller's state as the first pair of a scan: the history the first segment continues."""
    xp = array_namespace(state.running_max)
    return xp.zeros(state.running_max.shape[:-2], dtype=xp.bool), state


def _state_of(pair: Pair) -> LatteState:
    return pair[1]


def _first_id(ids: Any) -> Any:
    return ids[..., 0]


def _last_id(ids: Any) -> Any:
    return ids[..., -1]


def _packed_causal_block(
    q: Any,
    k: Any,
    v: Any,
    mask: Any,
    ids: Any,
    previous_last: Any,
    before: Pair | None,
    chunk_size: int,
    dtype: Any,
) -> Any:
    """One block's causal outputs (..., C, H, D) in a packed row, given the pair scanned before it.

    The core takes the block's pieces as segments; the state before the block reaches its
    first piece only, and only where its first token does not begin a segment.
    """
    xp = array_namespace(q)
    state = None
    if before is not None:
        state = restart(xp, before[1], starts_at_first(xp, ids, previous_last))
    index = segment_index(xp, segment_starts(xp, ids))
    y = causal_form(q, k, v, mask=mask, segment_ids=index, chunk_size=chunk_size, state=state)
    return xp.astype(y, dtype)


def _packed_read_block(
    q: Any,
    k: Any,
    v: Any,
    mask: Any,
    key_mask: Any,
    ids: Any,
    neighbours: tuple[Any, Any],
    pairs: tuple[Pair | None, Pair | None],
    dtype: Any,
) -> Any:
    """One block's bidirectional outputs in a packed row: :func:`packed_read` with the scanned pairs.

    ``neighbours``: the ids (...) just before and just after the block, or None at the row's ends;
    ``pairs``: the forward scan's pair before the block and the backward scan's after it, or None.
    """
    xp = array_namespace(q)
    empty = empty_state(xp, q, v, q.dtype)
    before = empty if pairs[0] is None else restart(xp, pairs[0][1], starts_at_first(xp, ids, neighbours[0]))
    after = empty if pairs[1] is None else restart(xp, pairs[1][1], ends_at_last(xp, ids, neighbours[1]))
    y = packed_read(xp, q, k, v, mask, key_mask, ids, before, after)
    return xp.astype(y, dtype)


# -- states in and out -------------------------------------------------------------------------------------------


def _state_blocks(state: LatteState, q: da.Array) -> Any:
    """A caller's state as delayed LatteStates on q's grid of (batch block..., head block)."""
    batch_and_heads = (*q.chunks[:-3], q.chunks[-2])
    n_latents, head_dim = state.numerator.shape[-2:]
    running_max, normaliser = (
        x.rechunk((*batch_and_heads, (n_latents,))).to_delayed(optimize_graph=False)[..., 0]
        for x in (state.running_max, state.normaliser)
    )
    numerator = state.numerator.rechunk((*batch_and_heads, (n_latents,), (head_dim,)))
    numerator = numerator.to_delayed(optimize_graph=False)[..., 0, 0]
    blocks = np.empty(running_max.shape, dtype=object)
    for index in np.ndindex(*blocks.shape):
        blocks[index] = _task(LatteState)(running_max[index], normaliser[index], numerator[index])
    return blocks


def _assemble_state(final: Any, q: da.Array, head_dim: int) -> LatteState:
    """The delayed final states on q's (batch block..., head block) grid as one LatteState of Dask arrays."""
    import dask.array as da
    from dask.array.utils import meta_from_array

    batch_and_heads = (*q.chunks[:-3], q.chunks[-2])
    n_latents = q.shape[-1]
    trailing_axes = {"running_max": (n_latents,), "normaliser": (n_latents,), "numerator": (n_latents, head_dim)}
    fields = {}
    for name, trailing in trailing_axes.items():
        blocks = np.empty(final.shape + (1,) * len(trailing), dtype=object)
        for index in np.ndindex(*final.shape):
            shape = tuple(chunks[i] for chunks, i in zip(batch_and_heads, index, strict=True)) + trailing
            meta = meta_from_array(q, len(shape), dtype=q.dtype)
            blocks[index + (0,) * len(trailing)] = da.from_delayed(
                _task(getattr)(final[index], name), shape, dtype=q.dtype, meta=meta
            )
        fields[name] = da.block(blocks.tolist())
    return LatteState(**fields)


# -- the block layout ----------------------------------------------------------------------------------------------


def _aligned(
    q: da.Array, k: da.Array, v: da.Array, mask: da.Array | None, segment_ids: da.Array | None = None
) -> tuple[da.Array, da.Array, da.Array, da.Array | None, da.Array | None]:
    """The inputs in one block layout: q's chunks along the batch axes, T and H; L and D in one piece."""
    q = q.rechunk({q.ndim - 1: -1})
    lead = q.chunks[:-1]  # (..., T, H)
    k = k.rechunk(q.chunks)
    v = v.rechunk((*lead, (v.shape[-1],)))
    return q, k, v, _lead(mask, q), _lead(segment_ids, q)


def _lead(x: da.Array | None, q: da.Array) -> da.Array | None:
    """An array (..., T) in q's blocks along the batch axes and T."""
    return None if x is None else x.rechunk(q.chunks[:-2])


class _Blocks:
    """The delayed blocks of q, k, v and the (..., T) arrays, indexed by (batch block..., T block, head block)."""

    def __init__(
        self,
        q: da.Array,
        k: da.Array,
        v: da.Array,
        mask: da.Array | None,
        *,
        segment_ids: da.Array | None = None,
        key_mask: da.Array | None = None,
    ) -> None:
        self.q = q
        self._q, self._k, self._v, self._mask = (self._grid(x) for x in (q, k, v, mask))
        self._ids, self._key_mask = self._grid(segment_ids), self._grid(key_mask)
        self._tokens = q.chunks[-3]

    def _grid(self, x: da.Array | None) -> Any:
        """x's delayed blocks on the (..., T, H) grid; a (..., T) array's blocks repeat across head blocks."""
        if x is None:
            return None
        blocks = x.to_delayed(optimize_graph=False)
        if x.ndim == self.q.ndim:
            return blocks[..., 0]  # L or D is one block
        return np.broadcast_to(blocks[..., None], self.q.numblocks[:-1])

    def rows(self) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
        """Every (batch block..., head block), with the grid indices of its blocks along T in order."""
        batch, n_heads = self.q.numblocks[:-3], self.q.numblocks[-2]
        return [
            ((*lead, h), [(*lead, t, h) for t in range(self.q.numblocks[-3])])
            for lead in np.ndindex(*batch)
            for h in range(n_heads)
        ]

    def keys_and_values(self, index: tuple[int, ...]) -> tuple[Delayed, Delayed, Delayed]:
        """The k, v and mask blocks at ``index``: what the block's state needs."""
        return self._k[index], self._v[index], None if self._mask is None else self._mask[index]

    def queries(self, index: tuple[int, ...]) -> tuple[Delayed, Delayed]:
        """The q and mask blocks at ``index``: what the block's read-out needs."""
        return self._q[index], None if self._mask is None else self._mask[index]

    def key_mask(self, index: tuple[int, ...]) -> Delayed:
        """The key_mask block at ``index``, or None."""
        return None if self._key_mask is None else self._key_mask[index]

    def keys(self, index: tuple[int, ...]) -> Delayed:
        """The keys that take part in the block at ``index`` (mask and key_mask), or None for all."""
        mask, key_mask = None if self._mask is None else self._mask[index], self.key_mask(index)
        if mask is None or key_mask is None:
            return key_mask if mask is None else mask
        return _task(keys_taking_part)(mask, key_mask)

    def ids(self, index: tuple[int, ...]) -> Delayed:
        """The segment ids block at ``index``."""
        return self._ids[index]

    def previous_last(self, index: tuple[int, ...]) -> Delayed:
        """The id of the token just before the block at ``index`` (the last of a non-empty block), or None."""
        *lead, t, h = index
        earlier = [s for s in range(t) if self._tokens[s] > 0]
        if not earlier:
            return None
        neighbour = (*lead, earlier[-1], h)
        return _task(_last_id)(self._ids[neighbour])

    def next_first(self, index: tuple[int, ...]) -> Delayed:
        """The id of the token just after the block at ``index`` (the first of a non-empty block), or None."""
        *lead, t, h = index
        later = [s for s in range(t + 1, len(self._tokens)) if self._tokens[s] > 0]
        if not later:
            return None
        neighbour = (*lead, later[0], h)
        return _task(_first_id)(self._ids[neighbour])

    def as_array(self, block: Delayed, index: tuple[int, ...], width: int, dtype: Any) -> da.Array:
        """The delayed block at ``index`` of the (..., T, H) grid, shape (..., C, H_block, width), as a Dask array."""
        import dask.array as da
        from dask.array.utils import meta_from_array

        shape = (*(self.q.chunks[axis][i] for axis, i in enumerate(index)), width)
        return da.from_delayed(block, shape, dtype=dtype, meta=meta_from_array(self.q, len(shape), dtype=dtype))
