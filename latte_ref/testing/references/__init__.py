"""Independent implementations of Latte, written another way, to validate the core against.

- :mod:`~latte_ref.testing.references.native_torch`: causal Latte in log space with
  ``torch.logcumsumexp``, and the bidirectional form (torch imported inside the functions);
- :mod:`~latte_ref.testing.references.native_jax`: a ``jax.lax.scan`` recurrence, with
  state and a ``step`` (JAX imported inside the functions);
- :func:`gated_linear_attention`: causal Latte as gated linear attention, on any Array-API namespace.

None of them shares code with the forms they check beyond the Array-API helpers.
"""

from __future__ import annotations

from . import native_jax, native_torch
from .gated_linear import gated_linear_attention

__all__ = ["gated_linear_attention", "native_jax", "native_torch"]
