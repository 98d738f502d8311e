"""The block layout: the inputs' delayed blocks on one (..., T, H) grid, and states in and out of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..._array import keys_taking_part
from ...state import LatteState
from .scans import Delayed, _task
from .tasks import _first_id, _last_id

if TYPE_CHECKING:
    import dask.array as da


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
