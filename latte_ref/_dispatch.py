"""Where the core forms hand an input to a sequence-parallel algorithm, without importing it.

:func:`latte_ref.causal` and :func:`latte_ref.bidirectional` give Dask arrays to
:mod:`latte_ref.parallel.dask`, which itself runs those forms on every block. Were the
forms to import it, the two would import each other. Instead :mod:`latte_ref.parallel`
registers its modules here when ``latte_ref`` is imported, and the forms look them up
by name when such an input arrives: imports flow one way, from the forms to ``parallel``.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["register_sequence_parallel", "sequence_parallel"]

_REGISTERED: dict[str, ModuleType] = {}


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
