"""The per-block tasks: the core functions on the arrays inside one block (NumPy, or CuPy)."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from ..._array import mask_keys_and_values
from ...causal import causal as causal_form
from ...segments import segment_index, segment_starts
from ...state import LatteState, empty_state, read_queries, restart, summarise
from .pieces import Pair, backward_piece, ends_at_last, forward_piece, packed_read, segmented_merge, starts_at_first


def _local_state(k: Any, v: Any, mask: Any) -> LatteState:
    """The state of one block's tokens alone: k (..., C, H, L), v (..., C, H, D), mask (..., C) or None."""
    xp = array_namespace(k, v)
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)
    return summarise(xp, k, v)


def _causal_block(q: Any, k: Any, v: Any, mask: Any, state: LatteState | None, chunk_size: int, dtype: Any) -> Any:
    """One block's outputs (..., C, H, D), given the state of every token before it."""
    y = causal_form(q, k, v, mask=mask, chunk_size=chunk_size, state=state)
    return array_namespace(y).astype(y, dtype)


def _read_block(q: Any, mask: Any, total: LatteState, dtype: Any) -> Any:
    """One block's bidirectional outputs: its queries read against the whole sequence's state."""
    xp = array_namespace(q)
    return xp.astype(read_queries(xp, q, mask, total), dtype)


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
