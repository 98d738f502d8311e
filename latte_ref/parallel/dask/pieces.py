"""Packed rows: the pieces of a block, one per segment it touches.

A block of a packed row splits into pieces, one per segment it touches. Its first piece may
continue a segment from the blocks before it, its last piece one into the blocks after it; the
pieces between lie wholly inside the block. Within a block, ``segment_starts`` of its ids gives
the starts after its first token; whether the first token starts a segment, and whether the last
one ends one, takes the neighbouring blocks' ids. These functions take the namespace, and the JAX
path uses them too.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import is_lazy_array

from ..._array import Array, device_of, keys_taking_part, mask_keys_and_values
from ...bidirectional import bidirectional as bidirectional_form
from ...segments import segment_index, segment_starts
from ...state import LatteState, combine, read_queries, restart, segmented_combine, summarise

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
