r"""Causal Latte written natively in JAX with ``lax.scan``: an independent implementation to validate against.

The scan carries, per head and latent, the running max m, the normaliser a and the
numerator S (D-vector):

.. math::

    m_t = \max(m_{t-1}, k_t), \quad c = e^{m_{t-1} - m_t}, \quad
    a_t = c\, a_{t-1} + e^{k_t - m_t}, \quad S_t = c\, S_{t-1} + e^{k_t - m_t} v_t, \quad
    y_t = \sum_l \operatorname{softmax}(q_t)_l\, S_{t,l} / a_{t,l}

The state is the tuple ``(m, a, S)``, so :func:`causal` takes ``state=`` and
``return_state=`` and :func:`step` follows :func:`latte_ref.step`'s contract.
JAX is imported inside the functions, so importing this module needs no JAX.

Examples
--------
>>> import numpy as np, jax.numpy as jnp, latte_ref
>>> from latte_ref.testing.references import native_jax
>>> q, k, v = np.random.default_rng(0).normal(size=(3, 9, 2, 4)).astype(np.float32)
>>> y = native_jax.causal(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
>>> bool(np.allclose(np.asarray(y), latte_ref.causal(q, k, v), atol=1e-5))
True
"""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["causal", "step"]


def _update(carry: tuple[Any, Any, Any], token: tuple[Any, Any, Any, Any]) -> tuple[tuple[Any, Any, Any], Any]:
    """One token: (m, a, S) and (p(l|t), k_t, v_t, real_t) -> new (m, a, S) and y_t."""
    import jax.numpy as jnp

    m, a, s = carry
    p_t, k_t, v_t, real_t = token
    k_t = jnp.where(real_t[..., None, None], k_t, -jnp.inf)  # a padded token has weight 0
    m_new = jnp.maximum(m, k_t)  # [..., H, L]
    shift = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
    c = jnp.exp(m - shift)
    w = jnp.exp(k_t - shift)
    a = c * a + w
    s = c[..., None] * s + w[..., None] * jnp.where(real_t[..., None, None], v_t, 0.0)[..., None, :]  # [..., H, L, D]
    read = jnp.where(a > 0, p_t / jnp.where(a > 0, a, 1.0), 0.0)  # [..., H, L]
    y_t = jnp.einsum("...hl,...hld->...hd", read, s)
    y_t = jnp.where(real_t[..., None, None], y_t, 0.0)
    return (m_new, a, s), y_t


@cache
def _compiled() -> dict[str, Any]:
    """The jitted scan and step, made on first use (compiled once per shape and dtype)."""
    import jax

    return {"scan": jax.jit(lambda carry, tokens: jax.lax.scan(_update, carry, tokens)), "update": jax.jit(_update)}


def _empty_state(k_t: Any, d: int, dtype: Any) -> tuple[Any, Any, Any]:
    import jax.numpy as jnp

    shape = k_t.shape
    return jnp.full(shape, -jnp.inf, dtype), jnp.zeros(shape, dtype), jnp.zeros((*shape, d), dtype)


def _compute_dtype(x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.float32 if x.dtype in (jnp.float16, jnp.bfloat16) else x.dtype


def causal(q: Any, k: Any, v: Any, *, mask: Any = None, state: Any = None, return_state: bool = False) -> Any:
    """Causal Latte as a ``lax.scan`` over the tokens; q, k (..., T, H, L), v (..., T, H, D) JAX arrays."""
    import jax
    import jax.numpy as jnp

    out_dtype, dtype = q.dtype, _compute_dtype(q)
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    if mask is None:
        mask = jnp.ones(q.shape[:-2], dtype=bool)
    carry = (
        _empty_state(k[..., 0, :, :], v.shape[-1], dtype)
        if state is None
        else tuple(jnp.asarray(x, dtype) for x in state)
    )
    tokens = (*(jnp.moveaxis(x, -3, 0) for x in (jax.nn.softmax(q, axis=-1), k, v)), jnp.moveaxis(mask, -1, 0))
    carry, y = _compiled()["scan"](carry, tokens)
    y = jnp.moveaxis(y, 0, -3).astype(out_dtype)
    return (y, carry) if return_state else y


def step(q_t: Any, k_t: Any, v_t: Any, state: Any, *, mask_t: Any = None) -> tuple[Any, Any]:
    """One token, :func:`latte_ref.step`'s contract.

    q_t, k_t (..., H, L) and v_t (..., H, D) JAX arrays; state ``(m, a, S)`` or None.
    """
    import jax
    import jax.numpy as jnp

    out_dtype, dtype = q_t.dtype, _compute_dtype(q_t)
    q_t, k_t, v_t = q_t.astype(dtype), k_t.astype(dtype), v_t.astype(dtype)
    carry = _empty_state(k_t, v_t.shape[-1], dtype) if state is None else tuple(jnp.asarray(x, dtype) for x in state)
    real_t = jnp.ones(q_t.shape[:-2], dtype=bool) if mask_t is None else mask_t
    carry, y_t = _compiled()["update"](carry, (jax.nn.softmax(q_t, axis=-1), k_t, v_t, real_t))
    return y_t.astype(out_dtype), carry
