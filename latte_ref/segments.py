"""Packed sequences: several documents in one row, told apart by ``segment_ids``.

A row of T tokens may hold several documents (segments) one after another, as
training packs them. ``segment_ids`` (..., T) gives each token the id of its
document; ids never decrease along T, so every segment is one run of equal ids.
A token attends only to the tokens of its own segment.

Every form reduces the ids to the tokens that begin a segment, ``starts`` (..., T):
True where the id changes from the token before. The call's first token is never a
start: it continues the history passed as ``state`` (none by default), so that a
stream cut inside a document carries on where it stopped.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import is_array_api_obj, is_dask_array, is_torch_array

from ._array import Array, device_of, namespace_of, resolve_namespace
from ._checks import same_device
from ._dispatch import is_traced

__all__ = ["check_segment_ids", "segment_ids_from_cu_seqlens", "segment_index", "segment_starts"]


def segment_ids_from_cu_seqlens(cu_seqlens: Any, *, xp: Any = None) -> Array:
    """Segment ids (T,) from cumulative sequence lengths, the packing format of attention kernels.

    ``cu_seqlens = [0, n_0, n_0 + n_1, ..., T]`` marks where each document starts;
    document i takes tokens ``cu_seqlens[i]`` to ``cu_seqlens[i + 1] - 1`` and gets id i.

    Parameters
    ----------
    cu_seqlens : integer array or sequence of ints, shape (n_segments + 1,)
        Starts at 0 and never decreases (a repeated value is an empty document).
    xp : namespace, optional
        Array namespace of the result when ``cu_seqlens`` is a list; that of ``cu_seqlens`` when
        it is an array, NumPy when neither says.

    Returns
    -------
    segment_ids : integer array, shape (T,), with T = ``cu_seqlens[-1]``, on the device of ``cu_seqlens``.

    Examples
    --------
    >>> import latte_ref
    >>> latte_ref.segment_ids_from_cu_seqlens([0, 2, 5, 6]).tolist()
    [0, 0, 1, 1, 1, 2]
    """
    if is_array_api_obj(cu_seqlens):
        xp = namespace_of(cu_seqlens=cu_seqlens)
        bounds = cu_seqlens
    else:
        xp = resolve_namespace(xp)
        try:
            bounds = xp.asarray([int(n) for n in cu_seqlens])
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cu_seqlens must be a sequence of ints or an integer array, got {cu_seqlens!r}") from exc
    if not xp.isdtype(bounds.dtype, "integral") or bounds.ndim != 1 or bounds.shape[0] < 1:
        raise ValueError(
            f"cu_seqlens must be a 1-d integer array [0, ..., T], got dtype {bounds.dtype} and shape {bounds.shape}"
        )
    if int(bounds[0]) != 0 or bool(xp.any(bounds[1:] < bounds[:-1])):
        raise ValueError("cu_seqlens must start at 0 and never decrease, like [0, 5, 22, 31, 40]")
    positions = xp.arange(int(bounds[-1]), dtype=bounds.dtype, device=device_of(bounds))
    # Token t belongs to document i when cu_seqlens[i] <= t < cu_seqlens[i + 1]: i = #{starts after the first <= t}.
    return xp.searchsorted(bounds[1:], positions, side="right")


def check_segment_ids(xp: Any, segment_ids: Array, expected_shape: tuple[int, ...], *, like: Array) -> Array:
    """Check ``segment_ids`` against the axes (..., T) of q and return :func:`segment_starts`.

    Decreasing ids are a ``ValueError`` where the values can be read. Dask arrays,
    traced JAX arrays and tensors under ``torch.compile`` are not read (that would compute, or cannot be done):
    there every run of equal ids is taken as one segment, so ids that decrease act
    as if they were numbered in order.
    """
    namespace_of(q=like, segment_ids=segment_ids)
    same_device(segment_ids=segment_ids, q=like)
    if not hasattr(segment_ids, "dtype") or not xp.isdtype(segment_ids.dtype, "integral"):
        given = f"dtype {segment_ids.dtype}" if hasattr(segment_ids, "dtype") else type(segment_ids).__name__
        raise TypeError(f"segment_ids must be an integer array (the document of each token), got {given}")
    if tuple(segment_ids.shape) != tuple(expected_shape):
        raise ValueError(
            f"segment_ids must have shape {tuple(expected_shape)} (the axes of q before H, L),"
            f" got {tuple(segment_ids.shape)}"
        )
    if _decreasing(xp, segment_ids):
        raise ValueError("segment_ids must not decrease along T: each document is one run of equal ids")
    return segment_starts(xp, segment_ids)


def _decreasing(xp: Any, segment_ids: Array) -> bool:
    """Whether the ids decrease somewhere along T; False where the values cannot be read cheaply."""
    if is_dask_array(segment_ids) or segment_ids.shape[-1] < 2:
        return False  # reading would compute the graph; or there is no pair of tokens
    if is_torch_array(segment_ids) and is_traced(segment_ids):
        return False  # under torch.compile reading a value would break the graph
    try:
        return bool(xp.any(segment_ids[..., 1:] < segment_ids[..., :-1]))
    except TypeError:  # a traced JAX array has no value to read (ConcretizationTypeError is a TypeError)
        return False


def segment_starts(xp: Any, segment_ids: Array) -> Array:
    """(..., T) bool: True where a token's id differs from the token before; never at the first token."""
    first = xp.zeros(
        (*segment_ids.shape[:-1], min(1, segment_ids.shape[-1])), dtype=xp.bool, device=device_of(segment_ids)
    )
    if segment_ids.shape[-1] < 2:
        return first
    return xp.concat([first, segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)


def segment_index(xp: Any, starts: Array) -> Array:
    """(..., T) int: the number of starts at or before each token, so tokens share a segment iff they share it."""
    return xp.cumulative_sum(xp.astype(starts, xp.int32), axis=-1)
