"""latte-ref: the reference implementation of Latte, latent attention in linear time.

Written once against the Python Array API standard: the same functions take NumPy,
CuPy, PyTorch, JAX, Dask and array-api-strict arrays, and return arrays of the
caller's namespace, device and dtype.

Shape letters used throughout:

    ...  batch axes (any number)     T  sequence length      H  heads
    L    latents per head            D  value dimension per head
"""

import importlib as _importlib
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._layer import LatteParams, init_params, latte_attention
from ._layer import register_jax_pytree as _register_jax_pytree
from .bidirectional import bidirectional
from .causal import DEFAULT_CHUNK_SIZE, causal
from .definition import attention_matrix, definition
from .recurrent import recurrent, step
from .segments import segment_ids_from_cu_seqlens
from .state import LatteState, combine, init_state

if "jax" in _sys.modules:  # JAX is already there: LatteParams becomes a pytree now (never imports JAX itself)
    _register_jax_pytree()

# Last: the sequence-parallel algorithms sit above the forms and register themselves with them.
from . import parallel  # noqa: F401  isort: skip
from ._dispatch import register_adapters as _register_adapters  # isort: skip

# The forms reach a framework's stop-gradient and autocast switch through its adapter (see _dispatch).
_register_adapters(_importlib.import_module("latte_ref.backends").adapters_by_module())

if _TYPE_CHECKING:
    # The adapters are installed as latte_ref.backends from the top-level backends/ folder (pyproject's
    # package-dir). A type checker reads folders, not that mapping: this tells it what the name holds.
    # At run time nothing is imported here; latte_ref.backends is imported where it is used.
    import backends as backends

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LatteParams",
    "LatteState",
    "attention_matrix",
    "bidirectional",
    "causal",
    "combine",
    "definition",
    "init_params",
    "init_state",
    "latte_attention",
    "recurrent",
    "segment_ids_from_cu_seqlens",
    "step",
]

# The submodules a user reaches as attributes (imported on first use where not yet loaded).
_SUBMODULES = ("backends", "explain", "layers", "model", "parallel", "segments", "state", "testing")


def __dir__() -> list[str]:
    """The API: ``__all__``, ``__version__`` and the public submodules; no helper this file imports."""
    return sorted([*__all__, "__version__", *_SUBMODULES])


def __getattr__(name: str) -> object:
    """``latte_ref.testing`` and the other public submodules without an import statement of their own."""
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
