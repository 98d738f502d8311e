"""Prefix maxima along an axis, plain and started again at segment starts.

The Array API has no cumulative max; these double the reach of each step (1, 2, 4, ...
positions back).
"""

from __future__ import annotations

from typing import Any

from .._array import Array


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
