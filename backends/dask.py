"""Dask: lazy, chunked NumPy arrays; the functions build a graph and compute nothing."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class DaskBackend(Backend):
    name = "dask"
    module = "dask.array"

    def asarray(self, x: Any, *, dtype: str | None = None, device: Any = None, chunks: Any = "auto") -> Any:
        import dask.array as da

        if device not in (None, "cpu"):
            raise ValueError(f"Dask arrays here are NumPy-backed and live on 'cpu', not {device!r}")
        x = np.array(x, dtype=None if dtype is None else np.dtype(dtype), copy=True)
        return da.from_array(x, chunks=chunks)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x.compute())

    def synchronize(self, x: Any) -> Any:
        return x.compute()

    def dtype(self, name: str) -> Any:
        if name not in self.dtypes() and name not in ("bool", "int32", "int64", "complex64", "complex128"):
            super().dtype(name)  # raises the shared "has no dtype" error
        return np.dtype(name)  # dask.array has no float16 attribute; NumPy's dtype is Dask's dtype

    def owns(self, x: Any) -> bool:
        return type(x).__module__.startswith("dask.")
