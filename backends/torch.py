"""PyTorch: CPU always, CUDA where a GPU is present; float16 and bfloat16."""

from __future__ import annotations

import contextlib
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

    def stop_gradient(self, x: Any) -> Any:
        return x.detach()

    def exact_arithmetic(self, x: Any) -> contextlib.AbstractContextManager[None]:
        """Autocast off for ``x``'s device type, where it is on: the forms choose their own computation dtype."""
        import torch  # a plain import, which torch.compile traces (importlib's it does not)

        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type, enabled=False)

    def is_traced(self, x: Any) -> bool:
        import torch

        return bool(torch.compiler.is_compiling())

    def cond(self, pred: Any, if_true: Any, if_false: Any, operands: tuple[Any, ...]) -> Any:
        """A Python ``if``: eagerly one branch runs; under ``torch.compile`` the graph breaks there.

        (``torch.cond`` needs operands that are tensors alone, and these carry states and ``None``.)
        """
        return if_true(*operands) if bool(pred) else if_false(*operands)

    def synchronize(self, x: Any) -> Any:
        torch = self.framework()
        if getattr(x, "is_cuda", False):
            torch.cuda.synchronize(x.device)
        return x
