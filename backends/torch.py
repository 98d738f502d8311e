"""PyTorch: CPU always, CUDA where a GPU is present; float16 and bfloat16."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class TorchBackend(Backend):
    name = "torch"
    module = "torch"

    def devices(self) -> list[Any]:
        torch = self.framework()
        cuda = [torch.device("cuda")] if torch.cuda.is_available() else []
        return [torch.device("cpu"), *cuda]

    def dtypes(self, device: Any = None) -> list[str]:
        return ["float64", "float32", "float16", "bfloat16"]

    def asarray(self, x: Any, *, dtype: str | None = None, device: Any = None) -> Any:
        torch = self.framework()
        t = torch.as_tensor(np.array(x, copy=True))
        return t.to(device=device or "cpu", dtype=None if dtype is None else self.dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        torch = self.framework()
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)  # NumPy has no bfloat16
        return np.from_dlpack(x.cpu()).copy()

    def synchronize(self, x: Any) -> Any:
        torch = self.framework()
        if getattr(x, "is_cuda", False):
            torch.cuda.synchronize(x.device)
        return x
