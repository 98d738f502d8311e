"""The merges of states across blocks as delayed tasks: an inclusive scan and a tree reduction.

Dask is imported on first use (:func:`_task`), so importing this module needs no Dask.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from ...state import LatteState, combine

Delayed = Any


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


@cache
def _task(fn: Callable[..., Any]) -> Any:
    """``fn`` as a pure Dask task (its key a hash of its arguments); Dask is imported on first use.

    Cached: each function is wrapped once, as a decorator at import would, not once per block.
    """
    import dask

    return dask.delayed(fn, pure=True)


def _combine(earlier: LatteState, later: LatteState) -> LatteState:
    return combine(earlier, later)
