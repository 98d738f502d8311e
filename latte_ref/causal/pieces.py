"""Packed rows in chunks: the pieces, one per segment, that segment starts cut every chunk into."""

from __future__ import annotations

from typing import Any, NamedTuple

from .._array import Array, device_of
from .chunks import _lower_triangle, _take_chunks
from .maxima import prefix_max


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
