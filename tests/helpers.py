"""Small helpers shared by the tests (imported as ``helpers``; tests/ is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max(|expected|, tiny): the metric of the tolerances above."""
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def random_qkv(
    rng: np.random.Generator, batch: tuple[int, ...], T: int, H: int, L: int, D: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = scale * rng.normal(size=(*batch, T, H, L))
    k = scale * rng.normal(size=(*batch, T, H, L))
    v = rng.normal(size=(*batch, T, H, D))
    return q, k, v
