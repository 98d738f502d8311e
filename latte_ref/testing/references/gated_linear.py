r"""Causal Latte rewritten as gated linear attention: an independent formulation to validate against.

With :math:`Z_t = \sum_{s \le t} e^{k_s}` per latent, causal Latte is the gated
linear attention

.. math::

    S_t = g_t \odot S_{t-1} + \phi(k)_t v_t^\top, \qquad y_t = \operatorname{softmax}(q_t)^\top S_t,

    \log g_t = \log Z_{t-1} - \log Z_t, \qquad \phi(k)_t = e^{k_t - \log Z_t},

because :math:`S_t = \sum_{s \le t} e^{k_s - \log Z_t} v_s = \sum_{s \le t} p(s \mid l, t)\, v_s`.
It shares no code with the core's running-max recurrence: the state is normalised
at every step (the gate does the rescaling) and no max appears.
"""

from __future__ import annotations

from typing import Any

from ..._array import Array, compute_dtype, namespace_of, softmax

__all__ = ["gated_linear_attention"]


def gated_linear_attention(q: Array, k: Array, v: Array, *, mask: Array | None = None) -> Array:
    """Causal Latte as a gated linear attention scan, one token at a time.

    Parameters
    ----------
    q, k : array, shape (..., T, H, L)
    v : array, shape (..., T, H, D)
    mask : bool array, shape (..., T), optional
        True for a real token; padding adds nothing to the state and gets output 0.

    Returns
    -------
    y : array, shape (..., T, H, D), in the inputs' dtype (16-bit inputs computed in float32).

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> from latte_ref.testing import gated_linear_attention
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 9, 2, 4))
    >>> bool(np.allclose(gated_linear_attention(q, k, v), latte_ref.causal(q, k, v)))
    True
    """
    xp = namespace_of(q=q, k=k, v=v, mask=mask)
    out_dtype, dtype = compute_dtype(xp, q, k, v)
    q, k, v = (xp.astype(a, dtype) for a in (q, k, v))
    if mask is not None:
        k = xp.where(mask[..., None, None], k, -xp.inf)
        v = xp.where(mask[..., None, None], v, xp.zeros_like(v))
    query = softmax(xp, q, axis=-1)  # [..., T, H, L]
    log_z = xp.full(k.shape[:-3] + k.shape[-2:], -xp.inf, dtype=dtype)  # [..., H, L]
    s = xp.zeros((*k.shape[:-3], *k.shape[-2:], v.shape[-1]), dtype=dtype)  # [..., H, L, D]
    outputs = []
    for t in range(k.shape[-3]):
        k_t = k[..., t, :, :]
        log_z_new = xp.logaddexp(log_z, k_t)
        s = _gate(xp, log_z, log_z_new)[..., None] * s + _feature(xp, k_t, log_z_new)[..., None] * v[..., t, :, None, :]
        log_z = log_z_new
        outputs.append((query[..., t, :, None, :] @ s)[..., 0, :])  # [..., H, 1, L] @ [..., H, L, D]
    y = xp.stack(outputs, axis=-3) if outputs else xp.zeros_like(v)
    if mask is not None:
        y = xp.where(mask[..., None, None], y, xp.zeros_like(y))
    return xp.astype(y, out_dtype)


def _gate(xp: Any, log_z_before: Array, log_z_after: Array) -> Array:
    """g_t = Z_{t-1} / Z_t; 1 while nothing has been seen (both -inf)."""
    empty = log_z_after == -xp.inf
    zero = xp.zeros_like(log_z_after)
    return xp.exp(xp.where(empty, zero, log_z_before) - xp.where(empty, zero, log_z_after))


def _feature(xp: Any, k_t: Array, log_z: Array) -> Array:
    """phi(k)_t = exp(k_t - log Z_t); 0 while nothing has been seen."""
    empty = log_z == -xp.inf
    return xp.where(empty, xp.zeros_like(k_t), xp.exp(k_t - xp.where(empty, xp.zeros_like(log_z), log_z)))
