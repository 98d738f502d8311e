"""What a test runs on: one backend, device and dtype (a :class:`Case`), and the matrix of them all.

The test suite, ``latte-ref check`` and ``latte-ref validate`` take their backends, devices
and dtypes from here, so that all three cover the same ground. Nothing here imports
pytest or a framework: the test suite turns :func:`matrix` into parameters.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .. import backends
from .tolerance import TOLERANCES

__all__ = ["FRAMEWORKS", "Case", "MatrixEntry", "matrix", "missing_framework"]

FRAMEWORKS = {"torch": "torch", "jax": "jax", "cupy": "cupy", "dask": "dask", "array_api_strict": "array_api_strict"}
"""Top-level module imported by a piece of code -> the backend that must be usable for it to run."""

_IMPORT = re.compile(r"^\s*(?:>>>\s*)?(?:from\s+(?P<module>[A-Za-z_]\w*)|import\s+(?P<names>[^#;\n]+))", re.MULTILINE)


class MatrixEntry(NamedTuple):
    """One cell of the matrix: a usable (backend, device, dtype), or a backend that is not usable and why."""

    backend: backends.Backend
    device: Any
    dtype_name: str | None
    unavailable: str | None

    @property
    def id(self) -> str:
        """``backend-device-dtype``, or the backend's name alone when it is unavailable."""
        if self.unavailable is not None:
            return self.backend.name
        return f"{self.backend.name}-{self.device}-{self.dtype_name}"


def matrix(dtypes: tuple[str, ...] | None = None, names: list[str] | None = None) -> list[MatrixEntry]:
    """Every known backend x device x dtype (only ``dtypes`` when given; only the backends ``names``).

    A backend that is not usable here gives one entry with the reason, so that a missing
    framework shows up as a skip rather than as nothing.

    Examples
    --------
    >>> from latte_ref.testing.matrix import matrix
    >>> [e.id for e in matrix(("float64",), ["numpy"])]
    ['numpy-cpu-float64']
    """
    entries = []
    for name, backend in backends.BACKENDS.items():
        if names is not None and name not in names:
            continue
        reason = backend.unavailable_reason()
        if reason is not None:
            entries.append(MatrixEntry(backend, None, None, reason))
            continue
        for device in backend.devices():
            for dtype in backend.dtypes(device):
                if dtypes is None or dtype in dtypes:
                    entries.append(MatrixEntry(backend, device, dtype, None))
    return entries


_EXTRAS = {"flax": "flax", "optax": "flax", "x_transformers": "xtransformers", "transformers": "transformers"}


def missing_framework(code: str) -> str | None:
    """Why ``code`` (a script or doctest) cannot run here: the first framework it imports that is unusable.

    Examples
    --------
    >>> from latte_ref.testing.matrix import missing_framework
    >>> missing_framework("import numpy as np") is None
    True
    >>> missing_framework("import numpy as np, no_such_framework") is None
    True
    """
    for module in _imported_modules(code):
        extra = _EXTRAS.get(module)  # libraries of an extra that are no backend
        if extra is not None and importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[{extra}]')"
        name = FRAMEWORKS.get(module)
        if name is not None:
            reason = backends.get_backend(name).unavailable_reason()
            if reason is not None:
                return f"{name} is unavailable: {reason}"
    return None


def _imported_modules(code: str) -> list[str]:
    """The top-level modules that ``code`` imports, in order (``import a.b as c, d`` gives a and d)."""
    modules = []
    for match in _IMPORT.finditer(code):
        if match["module"]:
            modules.append(match["module"])
        else:
            modules += [name.split()[0].split(".")[0] for name in match["names"].split(",") if name.strip()]
    return modules


@dataclass
class Case:
    """One backend, device and dtype that a test runs on.

    Attributes
    ----------
    backend : Backend
    device : device of the backend
    dtype_name : str
        One of the backend's :meth:`~latte_ref.backends.Backend.dtypes`.
    computes : list of str
        Dask graphs computed inside :meth:`no_compute` (the library must compute none).
    """

    backend: backends.Backend
    device: Any
    dtype_name: str
    computes: list[str] = field(default_factory=list)
    _reading: bool = field(default=False, repr=False)

    @property
    def xp(self) -> Any:
        return self.backend.namespace()

    @property
    def dtype(self) -> Any:
        return self.backend.dtype(self.dtype_name)

    @property
    def tol(self) -> float:
        """The max-abs bound of :data:`~latte_ref.testing.tolerance.TOLERANCES`, relative to the output's scale."""
        return TOLERANCES[self.dtype_name][1]

    def array(self, x: Any, dtype: str | None = None) -> Any:
        """``x`` (NumPy) as an array of this case: float arrays take the case's dtype, others keep theirs."""
        x = np.asarray(x)
        if dtype is None:
            dtype = self.dtype_name if x.dtype.kind == "f" else x.dtype.name
        return self.backend.asarray(x, dtype=dtype, device=self.device)

    def numpy(self, x: Any) -> np.ndarray:
        """A float64 NumPy copy of a result (a Dask result is computed: that is no compute of the library's)."""
        self._reading = True
        try:
            return np.asarray(self.backend.to_numpy(x), dtype=np.float64)
        finally:
            self._reading = False

    @contextmanager
    def no_compute(self) -> Iterator[Case]:
        """On Dask, count every graph computed inside, other than by :meth:`numpy`; fail if there were any.

        The library must only build graphs. Elsewhere this does nothing.
        """
        if self.backend.name != "dask":
            yield self
            return

        def record(keys: Any) -> None:
            if not self._reading:
                self.computes.append(str(keys)[:80])

        with self.backend.counting_computes(record):  # type: ignore[attr-defined]
            yield self
        assert not self.computes, f"the library computed a Dask graph inside a call: {self.computes}"

    def __str__(self) -> str:
        return f"{self.backend.name}-{self.device}-{self.dtype_name}"
