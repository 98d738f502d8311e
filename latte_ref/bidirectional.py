"""Bidirectional Latte: every token attends to the whole sequence through L latents."""

from __future__ import annotations

from array_api_compat import is_dask_array

from ._array import (
    Array,
    check_mask,
    check_qkv,
    compute_dtype,
    mask_keys_and_values,
    namespace_of,
)
from ._dispatch import sequence_parallel
from .state import read_queries, summarise

__all__ = ["bidirectional"]


def bidirectional(q: Array, k: Array, v: Array, *, mask: Array | None = None) -> Array:
    r"""Bidirectional latent attention in O(T·L·D).

    .. math::

        y_t = \sum_l p(l \mid t) \sum_s p(s \mid l)\, v_s, \qquad
        p(l \mid t) = \operatorname{softmax}_l q_{t,l}, \qquad
        p(s \mid l) = \operatorname{softmax}_s k_{s,l}

    Each latent summarises the values once (a softmax over the sequence and a
    matrix product), and every query reads those L summaries (a softmax over
    latents and a second matrix product): no T x T matrix is ever formed.

    Parameters
    ----------
    q, k : array, shape (..., T, H, L)
        Latent logits of the queries and keys.
    v : array, shape (..., T, H, D)
        Values.
    mask : bool array, shape (..., T), optional
        True for a real token. Padded tokens are no key and get output 0.

    Returns
    -------
    y : array, shape (..., T, H, D)
        In the promoted dtype of the inputs (16-bit inputs are computed in float32).

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 5, 16, 4, 8))
    >>> v = rng.normal(size=(5, 16, 4, 32))
    >>> latte_ref.bidirectional(q, k, v).shape
    (5, 16, 4, 32)
    """
    xp = namespace_of(q=q, k=k, v=v, mask=mask)
    check_qkv(q, k, v)
    check_mask(xp, mask, q.shape[:-2], like=q)
    out_dtype, dtype = compute_dtype(xp, q, k, v)
    q, k, v = (xp.astype(a, dtype, copy=False) for a in (q, k, v))
    if q.shape[-3] == 0:
        return xp.zeros_like(v, dtype=out_dtype)
    if is_dask_array(q):
        # A sequence chunked along T: Dask gets a graph that is parallel along T (see docs/distributed.md).
        return sequence_parallel("dask").bidirectional(q, k, v, mask=mask, out_dtype=out_dtype)
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)

    # p(l | t) = softmax_l q, read against the state of the whole sequence
    y = read_queries(xp, q, mask, summarise(xp, k, v))  # [..., T, H, D]
    return xp.astype(y, out_dtype, copy=False)
