r"""Latte written natively in PyTorch, in log space: an independent implementation to validate against.

Causal Latte is computed with cumulative log-sum-exps instead of a running max:

.. math::

    \log Z_t = \operatorname{logcumsumexp}_{s \le t} k_s, \qquad
    \log N^\pm_t = \operatorname{logcumsumexp}_{s \le t} (k_s + \log v^\pm_s), \qquad
    y_t = \sum_l \operatorname{softmax}(q_t)_l \left(e^{\log N^+_t - \log Z_t} - e^{\log N^-_t - \log Z_t}\right)_l

with :math:`v = v^+ - v^-` split into its positive and negative parts so that the
logarithms exist. Memory is O(T·H·L·D): this is a check, not a kernel.

torch is imported inside the functions, so importing this module needs no torch.

Examples
--------
>>> import numpy as np, torch, latte_ref
>>> from latte_ref.testing.references import native_torch
>>> q, k, v = (torch.as_tensor(a) for a in np.random.default_rng(0).normal(size=(3, 9, 2, 4)))
>>> bool(np.allclose(native_torch.causal(q, k, v).numpy(), latte_ref.causal(q.numpy(), k.numpy(), v.numpy())))
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["bidirectional", "causal"]


def _compute_dtype(x: Any) -> Any:
    import torch

    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _masked(q: Any, k: Any, v: Any, mask: Any) -> tuple[Any, Any, Any]:
    import torch

    dtype = _compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if mask is not None:
        real = mask[..., None, None]
        k = torch.where(real, k, torch.full_like(k, -torch.inf))
        v = torch.where(real, v, torch.zeros_like(v))
    return q, k, v


def causal(q: Any, k: Any, v: Any, *, mask: Any = None) -> Any:
    """Causal Latte from cumulative log-sum-exps; q, k (..., T, H, L), v (..., T, H, D) torch tensors."""
    import torch

    out_dtype = q.dtype
    q, k, v = _masked(q, k, v, mask)
    log_z = torch.logcumsumexp(k, dim=-3)[..., None]  # [..., T, H, L, 1]
    seen = log_z > -torch.inf  # no key yet: the output is 0, not nan
    safe_log_z = torch.where(seen, log_z, torch.zeros_like(log_z))
    keys = k[..., None]  # [..., T, H, L, 1]
    summary = torch.zeros_like(log_z)
    for sign in (1.0, -1.0):
        log_part = torch.log(torch.clamp(sign * v, min=0.0))[..., None, :]  # [..., T, H, 1, D]; -inf where 0
        log_n = torch.logcumsumexp(keys + log_part, dim=-4)  # [..., T, H, L, D]
        summary = summary + sign * torch.where(seen, torch.exp(log_n - safe_log_z), torch.zeros_like(log_n))
    y = torch.einsum("...thl,...thld->...thd", torch.softmax(q, dim=-1), summary)
    if mask is not None:
        y = torch.where(mask[..., None, None], y, torch.zeros_like(y))
    return y.to(out_dtype)


def bidirectional(q: Any, k: Any, v: Any, *, mask: Any = None) -> Any:
    """Bidirectional Latte with two softmaxes and an einsum; shapes as :func:`causal`."""
    import torch

    out_dtype = q.dtype
    q, k, v = _masked(q, k, v, mask)
    p_key = torch.nan_to_num(torch.softmax(k, dim=-3), nan=0.0)  # an all-padded sequence has no keys
    latent_values = torch.einsum("...shl,...shd->...hld", p_key, v)
    y = torch.einsum("...thl,...hld->...thd", torch.softmax(q, dim=-1), latent_values)
    if mask is not None:
        y = torch.where(mask[..., None, None], y, torch.zeros_like(y))
    return y.to(out_dtype)
