"""Where the core forms reach framework machinery without importing a framework.

:func:`latte_ref.causal` and :func:`latte_ref.bidirectional` give Dask arrays to
:mod:`latte_ref.parallel.dask`, which itself runs those forms on every block. Were the
forms to import it, the two would import each other. Instead :mod:`latte_ref.parallel`
registers its modules here when ``latte_ref`` is imported, and the forms look them up
by name when such an input arrives: imports flow one way, from the forms to ``parallel``.

Some array-level needs have no Array-API spelling and go to the framework's adapter in
``latte_ref.backends`` (registered here by ``latte_ref``'s ``__init__``, looked up by the
array's type):

- :func:`stop_gradient`: a running max is only the frame in which sums of exponentials
  are stored; it cancels out of every output, so no gradient may flow through its choice
  (``torch.Tensor.detach``, ``jax.lax.stop_gradient``; nothing for arrays without autograd);
- :func:`cond`: a choice between two computations by a value (the fast path or the exact
  one), kept by compilers: a Python ``if`` on eager arrays, ``jax.lax.cond`` on traced JAX
  arrays, ``torch.cond`` under ``torch.compile``;
- :func:`exact_arithmetic`: the forms compute in the dtype they chose, whatever an automatic
  mixed-precision context says (PyTorch's ``autocast`` would otherwise run their products in
  float16, where the factored exponentials overflow);
- :func:`one_graph`: a block of work compiled whole where the framework would compile each
  operation apart (eager JAX: ``jax.jit``), so that eager ``causal`` compiles once per shape.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from array_api_compat import is_lazy_array

__all__ = [
    "cond",
    "exact_arithmetic",
    "in_exact_arithmetic",
    "is_traced",
    "one_graph",
    "register_adapters",
    "register_sequence_parallel",
    "sequence_parallel",
    "stop_gradient",
]

_REGISTERED: dict[str, ModuleType] = {}
# The adapter of each framework by the top-level module of its array types ("torch", "jax", ...), filled
# once when latte_ref.backends is registered and never changed after: a compiler that traces a lookup
# guards on this dict, and a cache filled as arrays arrive would fail those guards and recompile.
_ADAPTER_BY_MODULE: dict[str, Any] = {}


def register_sequence_parallel(name: str, module: ModuleType) -> None:
    """Make ``module`` (with ``causal`` and ``bidirectional`` functions) the algorithm for ``name`` inputs."""
    _REGISTERED[name] = module


def sequence_parallel(name: str) -> ModuleType:
    """The module registered for ``name`` (``"dask"``); a ``RuntimeError`` if ``latte_ref.parallel`` is not loaded.

    Examples
    --------
    >>> import latte_ref
    >>> from latte_ref._dispatch import sequence_parallel
    >>> sequence_parallel("dask").__name__
    'latte_ref.parallel.dask'
    """
    try:
        return _REGISTERED[name]
    except KeyError:
        raise RuntimeError(f"no sequence-parallel algorithm for {name!r} inputs; import latte_ref.parallel") from None


def register_adapters(by_module: Mapping[str, Any]) -> None:
    """Let the forms find the adapter of an array: a ``latte_ref.backends.Backend`` by the top-level module
    that the array's type is defined in (``type(x).__module__``, e.g. ``"torch"``)."""
    _ADAPTER_BY_MODULE.clear()
    _ADAPTER_BY_MODULE.update(by_module)


def _adapter(x: Any) -> Any:
    """The adapter of ``x``'s framework; ``None`` for a type no adapter knows."""
    return _ADAPTER_BY_MODULE.get(type(x).__module__.partition(".")[0])


def stop_gradient(x: Any) -> Any:
    """``x`` as a constant for automatic differentiation (the same values; no gradient flows back through it).

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref._dispatch import stop_gradient
    >>> stop_gradient(np.ones(2))  # NumPy has no autograd: the array itself
    array([1., 1.])
    """
    adapter = _adapter(x)
    return x if adapter is None else adapter.stop_gradient(x)


def exact_arithmetic(x: Any) -> contextlib.AbstractContextManager[None]:
    """A context inside which operations on arrays like ``x`` run in their own dtypes (no autocast)."""
    adapter = _adapter(x)
    return contextlib.nullcontext() if adapter is None else adapter.exact_arithmetic(x)


F = TypeVar("F", bound=Callable[..., Any])


def in_exact_arithmetic(form: F) -> F:
    """Decorate a form whose first argument is an array: it runs in :func:`exact_arithmetic` of that array."""

    @functools.wraps(form)
    def wrapper(x: Any, *args: Any, **kwargs: Any) -> Any:
        context = exact_arithmetic(x)
        if isinstance(context, contextlib.nullcontext):  # nothing to switch off (a decode step saves the with)
            return form(x, *args, **kwargs)
        with context:
            return form(x, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def cond(pred: Any, if_true: Callable[..., Any], if_false: Callable[..., Any], *operands: Any) -> Any:
    """``if_true(*operands)`` where the boolean scalar array ``pred`` is True, else ``if_false(*operands)``.

    Both branches must return arrays of the same shapes and dtypes (a tuple or NamedTuple of
    them is fine): a compiler traces both and chooses at run time. Eagerly, only one runs.

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref._dispatch import cond
    >>> x = np.arange(3.0)
    >>> cond(np.any(x > 1), lambda a: a * 2, lambda a: a, x)
    array([0., 2., 4.])
    """
    adapter = _adapter(pred)
    if adapter is None:
        return if_true(*operands) if bool(pred) else if_false(*operands)
    return adapter.cond(pred, if_true, if_false, operands)


def one_graph(fn: Callable[..., Any], x: Any, *args: Any, static_argnums: tuple[int, ...] = (), **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` for arrays like ``x``, compiled as one graph where the framework would
    otherwise compile each operation apart (eager JAX: ``jax.jit``); elsewhere ``fn`` runs as it is.

    The positional arguments at ``static_argnums`` and every keyword argument that is not an array
    (a namespace, a chunk size) are static: the graph is specialised on them. The same values come
    out as from ``fn`` itself, to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref._dispatch import one_graph
    >>> one_graph(lambda xp, a: xp.exp(a), np.zeros(2), np, np.zeros(2), static_argnums=(0,))
    array([1., 1.])
    """
    adapter = _adapter(x)
    if adapter is None:
        return fn(*args, **kwargs)
    static_names = tuple(sorted(name for name, value in kwargs.items() if _is_static(value)))
    return adapter.one_graph(fn, args, kwargs, (static_argnums, static_names))


def _is_static(value: Any) -> bool:
    return isinstance(value, (int, float, str, ModuleType))


def is_traced(x: Any) -> bool:
    """Whether ``x``'s values cannot be read now: a JAX array (traced under ``jit``, or possibly so), an
    array ``torch.compile`` is tracing, a lazy array (Dask). Such arrays take branches by :func:`cond`."""
    adapter = _adapter(x)
    return is_lazy_array(x) if adapter is None else bool(adapter.is_traced(x))
