"""Bidirectional Latte: every token attends to the whole sequence through L latents."""

from __future__ import annotations

from typing import Any

from array_api_compat import is_dask_array

from ._array import (
    Array,
    _prepare_qkv,
    mask_keys_and_values,
    output_buffer,
)
from ._dispatch import sequence_parallel
from .state import combine, read_queries, summarise

__all__ = ["BLOCK_TOKENS", "bidirectional"]

BLOCK_TOKENS = 16_384
"""Tokens summarised, and read, at a time: memory beyond the output stays that of one block."""


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
    xp, q, k, v, out_dtype, _ = _prepare_qkv(q, k, v, mask)
    if q.shape[-3] == 0:
        return xp.zeros_like(v, dtype=out_dtype)
    if is_dask_array(q):
        # A sequence chunked along T: Dask gets a graph that is parallel along T (see docs/distributed.md).
        return sequence_parallel("dask").bidirectional(q, k, v, mask=mask, out_dtype=out_dtype)
    # BLOCK_TOKENS at a time, so that every pass over the tokens works on arrays that stay in cache
    n_tokens = q.shape[-3]
    blocks = [slice(start, min(start + BLOCK_TOKENS, n_tokens)) for start in range(0, n_tokens, BLOCK_TOKENS)]
    state = None
    for block in blocks:  # the state of the whole sequence, one block's summary at a time
        summary = summarise(xp, *_keys_and_values(xp, k, v, mask, block))
        state = summary if state is None else combine(state, summary)
    assert state is not None
    # p(l | t) = softmax_l q, read against the state of the whole sequence
    if len(blocks) == 1:
        y = read_queries(xp, q, mask, state)  # [..., T, H, D]
    else:
        y = _read_in_blocks(xp, q, mask, state, blocks, like=v)
    return xp.astype(y, out_dtype, copy=False)


def _read_in_blocks(xp: Any, q: Array, mask: Array | None, state: Any, blocks: list[slice], like: Array) -> Array:
    """:func:`read_queries` a block at a time, into one buffer where arrays are writable."""
    y = output_buffer(xp, like)
    pieces = []
    for block in blocks:
        y_block = read_queries(xp, q[..., block, :, :], None if mask is None else mask[..., block], state)
        if y is None:
            pieces.append(y_block)
        else:
            y[..., block, :, :] = y_block
    return xp.concat(pieces, axis=-3) if y is None else y


def _keys_and_values(xp: Any, k: Array, v: Array, mask: Array | None, block: slice) -> tuple[Array, Array]:
    """The block's keys and values, padding made no key (k = -inf, v = 0)."""
    k, v = k[..., block, :, :], v[..., block, :, :]
    return (k, v) if mask is None else mask_keys_and_values(xp, mask[..., block], k, v)
