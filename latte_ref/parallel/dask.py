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

Dask is imported inside the functions, so importing this module needs no Dask.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace

from .._array import mask_keys_and_values
from ..causal import causal as causal_form
from ..state import LatteState, combine, read_queries, summarise

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["bidirectional", "causal", "inclusive_scan", "tree_reduce"]

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
    state: the state before the first token (in the computation dtype) or None for an empty history.
    Returns lazy arrays: y (..., T, H, D) in ``out_dtype`` and, with ``return_state``, the final state.
    """
    import dask.array as da

    if segment_ids is not None:
        raise NotImplementedError("segment_ids on Dask is not implemented yet")
    q, k, v, mask = _aligned(q, k, v, mask)
    blocks = _Blocks(q, k, v, mask)
    start = None if state is None else _state_blocks(state, q)
    y = np.empty(q.numblocks[:-1], dtype=object)  # one Dask array per block of the (..., T, H) grid
    final = np.empty(q.numblocks[:-3] + q.numblocks[-2:-1], dtype=object)
    for row, sequence in blocks.rows():
        local = [_task(_local_state)(*blocks.keys_and_values(index)) for index in sequence]
        if start is None:
            scanned = inclusive_scan(local)
            before = [None, *scanned[:-1]]
        else:
            scanned = inclusive_scan([start[row], *local])
            before = scanned[:-1]
        for index, state_before in zip(sequence, before, strict=True):
            q_block, mask_block = blocks.queries(index)
            k_block, v_block, _ = blocks.keys_and_values(index)
            y_block = _task(_causal_block)(q_block, k_block, v_block, mask_block, state_before, chunk_size, out_dtype)
            y[index] = blocks.as_array(y_block, index, v.shape[-1], out_dtype)
        final[row] = scanned[-1]
    y_array = da.block(y[..., None].tolist())  # D in one piece
    if not return_state:
        return y_array
    return y_array, _assemble_state(final, q, v.shape[-1])


def bidirectional(q: da.Array, k: da.Array, v: da.Array, *, mask: da.Array | None, out_dtype: Any) -> da.Array:
    """Bidirectional Latte on Dask arrays chunked along T; called by :func:`latte_ref.bidirectional`.

    Shapes and dtypes as for :func:`causal`. Returns a lazy y (..., T, H, D) in ``out_dtype``.
    """
    import dask.array as da

    q, k, v, mask = _aligned(q, k, v, mask)
    blocks = _Blocks(q, k, v, mask)
    y = np.empty(q.numblocks[:-1], dtype=object)
    for _, sequence in blocks.rows():
        total = tree_reduce([_task(_local_state)(*blocks.keys_and_values(index)) for index in sequence])
        for index in sequence:
            q_block, mask_block = blocks.queries(index)
            y_block = _task(_read_block)(q_block, mask_block, total, out_dtype)
            y[index] = blocks.as_array(y_block, index, v.shape[-1], out_dtype)
    return da.block(y[..., None].tolist())


def inclusive_scan(states: list[Delayed]) -> list[Delayed]:
    """``out[i] = states[0] ⊕ ... ⊕ states[i]`` as delayed merges, in ceil(log2 n) rounds.

    Recursive doubling (Hillis and Steele): after the round of reach r, element i holds
    the merge of the up to 2r elements ending at i. Every round's merges are independent,
    so the depth of the graph grows with log2 n; it does O(n log n) merges of small states.
    """
    reach = 1
    while reach < len(states):
        states = states[:reach] + [_task(_combine)(states[i - reach], states[i]) for i in range(reach, len(states))]
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
    q: da.Array, k: da.Array, v: da.Array, mask: da.Array | None
) -> tuple[da.Array, da.Array, da.Array, da.Array | None]:
    """The inputs in one block layout: q's chunks along the batch axes, T and H; L and D in one piece."""
    q = q.rechunk({q.ndim - 1: -1})
    lead = q.chunks[:-1]  # (..., T, H)
    k = k.rechunk(q.chunks)
    v = v.rechunk((*lead, (v.shape[-1],)))
    return q, k, v, None if mask is None else mask.rechunk(lead[:-1])


class _Blocks:
    """The delayed blocks of q, k, v and mask, indexed by (batch block..., T block, head block)."""

    def __init__(self, q: da.Array, k: da.Array, v: da.Array, mask: da.Array | None) -> None:
        self.q = q
        self._q, self._k, self._v, self._mask = (self._grid(x) for x in (q, k, v, mask))

    def _grid(self, x: da.Array | None) -> Any:
        """x's delayed blocks on the (..., T, H) grid; a mask's blocks repeat across head blocks."""
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

    def as_array(self, block: Delayed, index: tuple[int, ...], width: int, dtype: Any) -> da.Array:
        """The delayed block at ``index`` of the (..., T, H) grid, shape (..., C, H_block, width), as a Dask array."""
        import dask.array as da
        from dask.array.utils import meta_from_array

        shape = (*(self.q.chunks[axis][i] for axis, i in enumerate(index)), width)
        return da.from_delayed(block, shape, dtype=dtype, meta=meta_from_array(self.q, len(shape), dtype=dtype))
