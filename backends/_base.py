"""The adapter interface that every framework module implements."""

from __future__ import annotations

import contextlib
import importlib
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["DTYPE_NAMES", "Backend", "Unavailable"]

DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")
"""Floating dtypes by name, most precise first; a backend offers the subset it has."""


class Unavailable(RuntimeError):
    """Raised when a backend that is not usable here is asked for arrays."""


class Backend:
    """One framework, seen from latte-ref. Subclasses fill in the framework-specific parts.

    Attributes
    ----------
    name : str
        Name used on the command line and in test ids.
    module : str
        The top-level module to import.
    """

    name: str = ""
    module: str = ""

    @property
    def array_modules(self) -> tuple[str, ...]:
        """The top-level modules that this backend's array types are defined in (``type(x).__module__``)."""
        return (self.module.split(".")[0],)

    # -- availability -----------------------------------------------------------------
    @cache  # noqa: B019 - backends are module-level singletons
    def unavailable_reason(self) -> str | None:
        """``None`` when this backend can make arrays here, else why not."""
        try:
            self.framework()
        except ImportError as exc:
            return f"{self.module} is not installed ({exc})"
        return self._probe()

    def _probe(self) -> str | None:
        """Framework-specific check that arrays can be made (e.g. a GPU for CuPy)."""
        return None

    def framework(self) -> ModuleType:
        """The framework's module, imported on first use."""
        return importlib.import_module(self.module)

    def require(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise Unavailable(f"backend {self.name!r} is unavailable: {reason}")

    # -- what it has ---------------------------------------------------------------------
    def namespace(self) -> Any:
        """The Array-API namespace of this backend's arrays."""
        from array_api_compat import array_namespace

        return array_namespace(self.asarray(np.zeros(1), dtype="float32"))

    def devices(self) -> list[Any]:
        """Devices arrays can be made on; the first is the default."""
        return ["cpu"]

    def dtypes(self, device: Any = None) -> list[str]:
        """Floating dtype names this backend computes in (from :data:`DTYPE_NAMES`)."""
        return ["float64", "float32", "float16"]

    def dtype(self, name: str) -> Any:
        """The framework's dtype object for a name (``"bool"``, ``"int64"`` or one of :data:`DTYPE_NAMES`)."""
        if name in DTYPE_NAMES and name not in self.dtypes():
            raise ValueError(f"backend {self.name!r} has no dtype {name!r}; it has {self.dtypes()}")
        return getattr(self.framework(), name)

    # -- arrays ----------------------------------------------------------------------------
    def asarray(self, x: Any, *, dtype: str | None = None, device: Any = None) -> Any:
        """A new array of this backend from ``x`` (NumPy or nested lists), in the dtype named, on ``device``."""
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        """A NumPy copy of ``x`` (16-bit floats come back as float32 where NumPy has no such dtype)."""
        raise NotImplementedError

    def synchronize(self, x: Any) -> Any:
        """Wait until ``x`` is computed (for timing); returns ``x`` (Dask: the computed array)."""
        return x

    # -- autograd, for latte_ref.testing's gradient checks ---------------------------------
    def vjp(self, function: Any, arrays: tuple[Any, ...], cotangent: np.ndarray, *, jit: bool = False) -> tuple:
        """The gradients of ``sum(function(*arrays) * cotangent)`` with respect to each array.

        An array that the output does not depend on through autograd gets ``None``. ``jit``:
        compile forward and backward as one function where the framework can (JAX).
        """
        raise NotImplementedError(f"backend {self.name!r} has no autograd")

    # -- what the core asks of a framework (through latte_ref._dispatch) -------------------
    def stop_gradient(self, x: Any) -> Any:
        """``x`` with no gradient flowing back through it; arrays without autograd are returned as they are."""
        return x

    def exact_arithmetic(self, x: Any) -> contextlib.AbstractContextManager[None]:
        """A context in which operations on arrays like ``x`` keep their dtypes (no automatic mixed precision)."""
        return contextlib.nullcontext()

    def is_traced(self, x: Any) -> bool:
        """Whether the values of ``x`` cannot be read now (traced by a compiler, or lazy)."""
        from array_api_compat import is_lazy_array

        return bool(is_lazy_array(x))

    def cond(self, pred: Any, if_true: Any, if_false: Any, operands: tuple[Any, ...]) -> Any:
        """One of two branches by a boolean scalar array; eager arrays: a Python ``if``."""
        return if_true(*operands) if bool(pred) else if_false(*operands)

    def one_graph(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], static: tuple[tuple[int, ...], tuple[str, ...]]
    ) -> Any:
        """``fn(*args, **kwargs)``, as one compiled graph where the framework compiles each operation apart.

        ``static`` names the arguments that are not arrays (positions, then keywords): a compiler
        specialises on them. Frameworks that run each operation as it comes: ``fn`` itself.
        """
        return fn(*args, **kwargs)

    def owns(self, x: Any) -> bool:
        """Whether ``x`` is an array of this backend (without importing the framework)."""
        return type(x).__module__.split(".")[0] in self.array_modules

    def __repr__(self) -> str:
        return f"<latte_ref backend {self.name!r}>"
