"""Sequence-parallel Latte: the sequence axis T split across Dask blocks or JAX devices.

The top layer of the package: these modules use the forms and the state, and nothing
below imports them. Each imports its framework inside its functions, so importing this
package needs neither Dask nor JAX.

- :mod:`latte_ref.parallel.dask`: the graph :func:`latte_ref.causal` and
  :func:`latte_ref.bidirectional` build for Dask arrays chunked along T; the forms
  reach it through :mod:`latte_ref._dispatch`, where this package registers it.
- :mod:`latte_ref.parallel.jax`: T sharded across the devices of a JAX mesh, called
  directly (``latte_ref.parallel.jax.causal(q, k, v, mesh=mesh)``).
"""

from __future__ import annotations

from .._dispatch import register_sequence_parallel
from . import dask, jax

__all__ = ["dask", "jax"]

register_sequence_parallel("dask", dask)
