"""Dask: lazy, chunked NumPy arrays; the functions build a graph and compute nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._base import DTYPE_NAMES, Backend


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
        """A NumPy copy of ``x``: a Dask array is computed here, with the configured scheduler.

        An array already computed (what :meth:`synchronize` returns) is copied as it is.
        """
        if type(x).__module__.startswith("dask."):
            x = x.compute()
        return np.array(x, copy=True)

    def synchronize(self, x: Any) -> Any:
        return x.compute()

    def dtype(self, name: str) -> Any:
        if name in DTYPE_NAMES and name not in self.dtypes():
            raise ValueError(f"backend 'dask' has no dtype {name!r}; it has {self.dtypes()}")
        return np.dtype(name)  # Dask arrays carry NumPy dtypes

    @contextlib.contextmanager
    def counting_computes(self, record: Callable[[Any], None]) -> Iterator[None]:
        """Inside, every graph computed runs on the synchronous scheduler after ``record(keys)``."""
        import dask

        def counting_scheduler(dsk: Any, keys: Any, **kwargs: Any) -> Any:
            record(keys)
            return dask.get(dsk, keys, **kwargs)

        with dask.config.set(scheduler=counting_scheduler):
            yield

    def owns(self, x: Any) -> bool:
        return type(x).__module__.startswith("dask.")
