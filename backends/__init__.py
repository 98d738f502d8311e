"""Everything that knows a framework, one small adapter module per framework.

Installed as ``latte_ref.backends``. The core (``latte_ref``) never imports a
framework; these adapters import theirs lazily, on first use, so that listing
the backends costs nothing for frameworks that are not installed.

Each adapter answers the same questions (see :class:`Backend`): is the framework
installed and usable here (and why not), which devices and dtypes it has, how to
make an array from NumPy on a device and dtype, how to wait for a result, and how
to bring a result back to NumPy.

Only adapters live here. The algorithms that use a framework's own machinery live
with the rest of the library: the sequence-parallel forms in :mod:`latte_ref.parallel`,
the independent implementations to validate the core against in
:mod:`latte_ref.testing.references`.

Examples
--------
>>> from latte_ref import backends
>>> "numpy" in backends.available_backends()
True
>>> b = backends.get_backend("numpy")
>>> x = b.asarray([[1.0, 2.0]], dtype="float32")
>>> x.dtype.name, b.to_numpy(x).shape
('float32', (1, 2))
"""

from __future__ import annotations

import difflib

from ._base import Backend, Unavailable
from .array_api_strict import ArrayApiStrictBackend
from .cupy import CupyBackend
from .dask import DaskBackend
from .jax import JaxBackend
from .numpy import NumpyBackend
from .torch import TorchBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "Unavailable",
    "adapters_by_module",
    "available_backends",
    "backend_of",
    "did_you_mean",
    "get_backend",
]

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        NumpyBackend(),
        ArrayApiStrictBackend(),
        TorchBackend(),
        JaxBackend(),
        CupyBackend(),
        DaskBackend(),
    )
}
"""Every known backend by name, installed or not."""


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`); a ``ValueError`` lists the known names."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}{did_you_mean(name)}; known: {', '.join(BACKENDS)}") from None


# What people type for a backend's name, beyond spelling slips (which difflib catches).
_ALIASES = {"pytorch": "torch", "np": "numpy", "jnp": "jax", "strict": "array_api_strict"}


def did_you_mean(name: str) -> str:
    """``" (did you mean 'torch'?)"`` for a near miss of a backend's name (``pytorch``, ``nunpy``), else ``""``."""
    guess = _ALIASES.get(name.lower()) or next(iter(difflib.get_close_matches(name.lower(), BACKENDS, n=1)), None)
    return f" (did you mean {guess!r}?)" if guess else ""


def adapters_by_module() -> dict[str, Backend]:
    """Every backend by the top-level module of its array types (``type(x).__module__``), e.g. ``"torch"``."""
    return {module: b for b in BACKENDS.values() for module in b.array_modules}


def available_backends() -> dict[str, Backend]:
    """The backends that are installed and can make arrays here, by name."""
    return {name: b for name, b in BACKENDS.items() if b.unavailable_reason() is None}


def backend_of(x: object) -> Backend:
    """The backend whose arrays ``x`` is one of."""
    for b in BACKENDS.values():
        if b.owns(x):
            return b
    raise TypeError(f"no backend handles arrays of type {type(x).__module__}.{type(x).__name__}")
