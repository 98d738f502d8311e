"""The two forms on Dask arrays chunked along T: a graph built row by row of blocks along T."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...state import LatteState
from .layout import _aligned, _assemble_state, _Blocks, _lead, _state_blocks
from .scans import Delayed, _task, inclusive_scan, tree_reduce
from .tasks import (
    _backward_piece,
    _causal_block,
    _continuing,
    _forward_piece,
    _local_state,
    _packed_causal_block,
    _packed_read_block,
    _read_block,
    _segmented_merge,
    _state_of,
)

if TYPE_CHECKING:
    import dask.array as da


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
