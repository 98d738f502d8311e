"""array-api-strict: the standard and nothing more, at API version 2024.12."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend

API_VERSION = "2024.12"


class ArrayApiStrictBackend(Backend):
    name = "array_api_strict"
    module = "array_api_strict"

    def framework(self) -> Any:
        xp = super().framework()
        xp.set_array_api_strict_flags(api_version=API_VERSION)
        return xp

    def dtypes(self, device: Any = None) -> list[str]:
        return ["float64", "float32"]  # the standard has no 16-bit floats

    def devices(self) -> list[Any]:
        return [self.framework().Device("CPU_DEVICE")]

    def asarray(self, x: Any, *, dtype: str | None = None, device: Any = None) -> Any:
        xp = self.framework()
        x = np.asarray(x)
        return xp.asarray(x, dtype=self.dtype(dtype or x.dtype.name), device=device, copy=True)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.from_dlpack(x).copy()  # the standard's way out: DLPack
