"""Random inputs for tests and checks: float64 NumPy q, k, v in the (..., T, H, L) / (..., T, H, D) layout."""

from __future__ import annotations

import numpy as np

__all__ = ["random_qkv", "right_padded_mask"]


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
