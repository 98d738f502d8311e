"""CuPy: NVIDIA GPUs only. It can import on a machine without a GPU; then it cannot make arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class CupyBackend(Backend):
    name = "cupy"
    module = "cupy"

    def _probe(self) -> str | None:
        cupy = self.framework()
        try:
            cupy.zeros(1)
            return None
        except Exception as exc:  # CUDA driver or runtime missing: the usual case on a CPU machine
            return f"cupy imports but cannot make arrays without a usable GPU ({type(exc).__name__}: {exc})"

    def devices(self) -> list[Any]:
        cupy = self.framework()
        return [cupy.cuda.Device(i) for i in range(cupy.cuda.runtime.getDeviceCount())]

    def asarray(self, x: Any, *, dtype: str | None = None, device: Any = None) -> Any:
        cupy = self.framework()
        with device if device is not None else cupy.cuda.Device():
            return cupy.array(np.asarray(x), dtype=None if dtype is None else self.dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.get()

    def synchronize(self, x: Any) -> Any:
        self.framework().cuda.get_current_stream().synchronize()
        return x
