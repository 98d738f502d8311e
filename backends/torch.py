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

    def vjp(self, function: Any, arrays: tuple[Any, ...], cotangent: np.ndarray, *, jit: bool = False) -> tuple:
        torch = self.framework()
        leaves = [a.detach().clone().requires_grad_(True) for a in arrays]
        with torch.enable_grad():
            y = function(*leaves)
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"returned a {type(y).__module__}.{type(y).__name__}, not a torch.Tensor")
            if not y.requires_grad:  # every input detached: nothing flows back
                return (None,) * len(leaves)
            weights = torch.as_tensor(np.asarray(cotangent)).to(device=y.device, dtype=y.dtype)
            return tuple(torch.autograd.grad(y, leaves, grad_outputs=weights, allow_unused=True))

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
        """``torch.cond`` while ``torch.compile`` traces (one graph, no break), a Python ``if`` eagerly.

        ``torch.cond`` takes tensors only: NamedTuples among the operands (a ``LatteState``) are
        flattened here and rebuilt inside the branches. Its branches may not return one of their
        operands or a view of one (an alias), nor a NamedTuple: the forms' branches return new
        arrays, a tensor or a tuple of them. Operands and outputs cross ``torch.cond`` as 1-D
        arrays: it compares the strides of the two branches' outputs (and, in the backward, of the
        operands' gradients), which for a symbolic size (``dynamic=True``) are expressions it
        cannot match unless the arrays are flat. The outputs' shapes come from tracing
        ``if_false`` once more, which the forms make the cheap branch (zeros); its arrays are unused.
        The branches must read arrays through their operands only, not from an enclosing scope.
        """
        import torch
        from torch.utils import _pytree

        if torch.compiler.is_compiling():
            leaves, spec = _pytree.tree_flatten(operands)

            def rebuilt(branch: Any) -> Any:
                def flat_branch(*flat: Any) -> Any:
                    dense = [t.reshape(shape) for t, shape in zip(flat, operand_shapes, strict=True)]
                    out = _pytree.tree_leaves(branch(*_pytree.tree_unflatten(dense, spec)))
                    # Flat outputs: torch.cond compares the branches' strides, and with a symbolic size
                    # (a dynamic T) those of a dense array of rank > 1 are expressions it cannot match.
                    return tuple(t.contiguous().reshape(-1) for t in out)

                return flat_branch

            # The outputs' structure and shapes, from the branch the forms make cheap (zeros): traced here
            # only for them, its arrays are unused and leave the graph.
            like_leaves, out_spec = _pytree.tree_flatten(if_false(*operands))
            # Flat operands for the same reason: their gradients are the outputs of the backward's cond.
            operand_shapes = [tuple(t.shape) for t in leaves]
            flat_out = torch.cond(pred, rebuilt(if_true), rebuilt(if_false), tuple(t.reshape(-1) for t in leaves))
            return _pytree.tree_unflatten([t.reshape(a.shape) for t, a in zip(flat_out, like_leaves)], out_spec)
        return if_true(*operands) if bool(pred) else if_false(*operands)

    def synchronize(self, x: Any) -> Any:
        torch = self.framework()
        if getattr(x, "is_cuda", False):
            torch.cuda.synchronize(x.device)
        return x
