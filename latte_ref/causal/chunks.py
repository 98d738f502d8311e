"""Chunks taken out of arrays (..., N, ...) along their chunk axis and put back, and the causal triangle of a chunk."""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_writeable_array

from .._array import Array, device_of
from ..state import LatteState


def _any_but_chunks(xp: Any, flags: Array) -> Array:
    """``any`` over the batch axes of flags (..., N): (N,)."""
    return xp.any(xp.reshape(flags, (math.prod(flags.shape[:-1]), flags.shape[-1])), axis=0)


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
