"""Random inputs for tests and checks: float64 NumPy q, k (..., T, H, L), v (..., T, H, D), and segment ids."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["random_qkv", "right_padded_mask", "segment_ids_of", "segment_lengths"]


def random_qkv(
    rng: np.random.Generator,
    batch: tuple[int, ...],
    T: int,
    H: int,
    L: int,
    D: int,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard normal q, k (scaled by ``scale``) of shape (*batch, T, H, L) and v of shape (*batch, T, H, D).

    Drawn in the order q, k, v, so a seed gives the same arrays wherever this is used.

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref.testing.inputs import random_qkv
    >>> q, k, v = random_qkv(np.random.default_rng(0), (2,), 5, 3, 4, 8)
    >>> q.shape, v.shape
    ((2, 5, 3, 4), (2, 5, 3, 8))
    """
    q = scale * rng.normal(size=(*batch, T, H, L))
    k = scale * rng.normal(size=(*batch, T, H, L))
    v = rng.normal(size=(*batch, T, H, D))
    return q, k, v


def right_padded_mask(lengths: list[int], T: int) -> np.ndarray:
    """A (len(lengths), T) boolean mask, True for the first ``lengths[b]`` tokens of row b.

    Examples
    --------
    >>> from latte_ref.testing.inputs import right_padded_mask
    >>> right_padded_mask([3, 1], 4).astype(int).tolist()
    [[1, 1, 1, 0], [1, 0, 0, 0]]
    """
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def segment_ids_of(lengths: tuple[int, ...] | list[int], *, first: int = 0, step: int = 1) -> np.ndarray:
    """(T,) int32 ids, T = sum(lengths): document i, of ``lengths[i]`` tokens, gets id ``first + i * step``.

    Examples
    --------
    >>> from latte_ref.testing.inputs import segment_ids_of
    >>> segment_ids_of([2, 1, 3], first=5, step=2).tolist()
    [5, 5, 7, 9, 9, 9]
    """
    ids = first + step * np.arange(len(lengths))
    return np.repeat(ids, lengths).astype(np.int32)


def segment_lengths(segment_ids: np.ndarray) -> list[int]:
    """The lengths of the runs of equal ids in one row (T,): the documents of a packed row.

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref.testing.inputs import segment_lengths
    >>> segment_lengths(np.array([5, 5, 7, 9, 9, 9]))
    [2, 1, 3]
    """
    if segment_ids.size == 0:
        return []
    bounds = [0, *(np.flatnonzero(np.diff(segment_ids)) + 1).tolist(), int(segment_ids.size)]
    return [stop - start for start, stop in itertools.pairwise(bounds)]
