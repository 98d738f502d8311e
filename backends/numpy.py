"""NumPy: the embedded default, always available."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    module = "numpy"

    def asarray(self, x: Any, *, dtype: str | None = None, device: Any = None) -> np.ndarray:
        if device not in (None, "cpu"):
            raise ValueError(f"NumPy arrays live on 'cpu', not {device!r}")
        return np.array(x, dtype=None if dtype is None else self.dtype(dtype), copy=True)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)
