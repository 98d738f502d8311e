"""Bidirectional Latte: every token attends to the whole sequence through L latents."""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_dask_array

from ._array import Array, device_of, keys_taking_part, mask_keys_and_values, output_buffer, take_tokens
from ._checks import _prepare_qkv
from ._dispatch import in_exact_arithmetic, sequence_parallel
from ._layout import swap_time_and_heads
from .causal import causal, prefix_max
from .segments import check_segment_ids, segment_index
from .state import combine, read_queries, summarise, warn_if_values_may_overflow

__all__ = ["BLOCK_TOKENS", "bidirectional"]

BLOCK_TOKENS = 16_384
"""Tokens summarised, and read, at a time: memory beyond the output stays that of one block."""


@in_exact_arithmetic
def bidirectional(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    key_mask: Array | None = None,
    segment_ids: Array | None = None,
    layout: str = "BTHD",
) -> Array:
    r"""Bidirectional latent attention in O(T·L·D), self- or cross-attention.

    .. math::

        y_t = \sum_l p(l \mid t) \sum_s p(s \mid l)\, v_s, \qquad
        p(l \mid t) = \operatorname{softmax}_l q_{t,l}, \qquad
        p(s \mid l) = \operatorname{softmax}_s k_{s,l}

    Each latent summarises the values once (a softmax over the keys and a
    matrix product), and every query reads those L summaries (a softmax over
    latents and a second matrix product): no Tq x Tk matrix is ever formed.
    The keys may come from another sequence than the queries (cross-attention):
    the summaries run over its Tk tokens, the reading over the Tq queries.

    Parameters
    ----------
    q : array, shape (..., Tq, H, L)
        Latent logits of the queries.
    k : array, shape (..., Tk, H, L)
        Latent logits of the keys; Tk = Tq for self-attention, any length for cross-attention.
    v : array, shape (..., Tk, H, D)
        Values.
    mask : bool array, shape (..., T), optional
        True for a real token of the one sequence (needs Tq = Tk). Padded tokens are no key and get output 0.
    key_mask : bool array, shape (..., Tk), optional
        True for a key that takes part. Excluded keys are read by no query; every query keeps its output.
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row, never decreasing along T (needs Tq = Tk): a token
        attends to the whole of its own document and to nothing else (see :func:`_packed`).
    layout : {"BTHD", "BHTD"}
        ``"BTHD"`` (default): q, k (..., T, H, L), v and y (..., T, H, D). ``"BHTD"``: head-first,
        (..., H, T, L) and (..., H, T, D), y too. k and v may have H_kv heads, a divisor of H
        (grouped-query attention: query head h reads K/V head h // (H / H_kv)).

    Returns
    -------
    y : array, shape (..., Tq, H, D)
        In the promoted dtype of the inputs (16-bit inputs are computed in float32).

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 5, 16, 4, 8))
    >>> v = rng.normal(size=(5, 16, 4, 32))
    >>> latte_ref.bidirectional(q, k, v).shape
    (5, 16, 4, 32)

    Cross-attention: 16 queries read 40 keys and values of another sequence, the last 10 of them excluded.

    >>> k_other, v_other = rng.normal(size=(5, 40, 4, 8)), rng.normal(size=(5, 40, 4, 32))
    >>> key_mask = np.arange(40) < 30
    >>> y = latte_ref.bidirectional(q, k_other, v_other, key_mask=np.broadcast_to(key_mask, (5, 40)))
    >>> y.shape, bool(np.allclose(y, latte_ref.bidirectional(q, k_other[:, :30], v_other[:, :30])))
    ((5, 16, 4, 32), True)
    """
    xp, q, k, v, out_dtype, _ = _prepare_qkv(
        q, k, v, mask, cross=True, key_mask=key_mask, layout=layout, segment_ids=segment_ids
    )
    y = _time_major(xp, q, k, v, mask=mask, key_mask=key_mask, segment_ids=segment_ids, out_dtype=out_dtype)
    return swap_time_and_heads(xp, y, layout)


def _time_major(
    xp: Any,
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None,
    key_mask: Array | None,
    segment_ids: Array | None,
    out_dtype: Any,
) -> Array:
    """:func:`bidirectional` on checked arrays: q (..., Tq, H, L), k (..., Tk, H, L), v (..., Tk, H, D) -> y."""
    n_queries, n_keys = q.shape[-3], k.shape[-3]
    warn_if_values_may_overflow(xp, v, state_tokens=n_keys)
    if segment_ids is not None:
        if n_queries != n_keys:
            raise ValueError(f"segment_ids needs q and k of one length, got Tq={n_queries} and Tk={n_keys}")
        starts = check_segment_ids(xp, segment_ids, q.shape[:-2], like=q)
        if is_dask_array(q):  # each block's pieces, and a segmented scan of states each way
            return sequence_parallel("dask").bidirectional(
                q, k, v, mask=mask, key_mask=key_mask, segment_ids=segment_ids, out_dtype=out_dtype
            )
        return xp.astype(_packed(xp, q, k, v, keys_taking_part(mask, key_mask), mask, starts), out_dtype, copy=False)
    if math.prod(q.shape[:-1]) == 0:  # no query (T = 0 or an empty batch): nothing to read
        return xp.zeros((*q.shape[:-1], v.shape[-1]), dtype=out_dtype, device=device_of(q))
    if is_dask_array(q) and key_mask is None and n_queries == n_keys:
        # A sequence chunked along T: Dask gets a graph that is parallel along T (see docs/distributed.md).
        return sequence_parallel("dask").bidirectional(q, k, v, mask=mask, out_dtype=out_dtype)
    # (Cross-attention on Dask takes the path below too, as a lazy graph of whole-array operations.)
    keys = keys_taking_part(mask, key_mask)
    # BLOCK_TOKENS at a time, so that every pass over the tokens works on arrays that stay in cache
    state = None
    for block in _blocks(n_keys) or [slice(0, 0)]:  # the state of all the keys, one block's summary at a time
        summary = summarise(xp, *_keys_and_values(xp, k, v, keys, block))
        state = summary if state is None else combine(state, summary)
    assert state is not None
    # p(l | t) = softmax_l q, read against the state of all the keys
    query_blocks = _blocks(n_queries)
    if len(query_blocks) == 1:
        y = read_queries(xp, q, mask, state)  # [..., Tq, H, D]
    else:
        y = _read_in_blocks(xp, q, mask, state, query_blocks, like=v)
    return xp.astype(y, out_dtype, copy=False)


def _blocks(n_tokens: int) -> list[slice]:
    """``range(n_tokens)`` in slices of BLOCK_TOKENS (none when n_tokens is 0)."""
    return [slice(start, min(start + BLOCK_TOKENS, n_tokens)) for start in range(0, n_tokens, BLOCK_TOKENS)]


def _read_in_blocks(xp: Any, q: Array, mask: Array | None, state: Any, blocks: list[slice], like: Array) -> Array:
    """:func:`read_queries` a block at a time, into one buffer where arrays are writable.

    ``like``: an array of the output's dtype and device, and its shape but for the length along T, which is q's.
    """
    y = output_buffer(xp, like, shape=(*q.shape[:-1], like.shape[-1]))
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


def _packed(xp: Any, q: Array, k: Array, v: Array, keys: Array | None, mask: Array | None, starts: Array) -> Array:
    """Bidirectional Latte over packed segments, as causal Latte over the keys and then the queries of each.

    A segment's queries all read one state, that of all its keys. Lay the 2T tokens out as
    [keys of segment 1, queries of segment 1, keys of segment 2, queries of segment 2, ...],
    with the query copies adding nothing to the state (k = -inf): causally, every query copy
    then reads exactly its segment's keys. The chunkwise causal form evaluates that in
    O(T·L·(C + D)), exact for any logits, and its segmented scan keeps the segments apart.

    q, k: (..., T, H, L); v: (..., T, H, D); keys, mask: (..., T) or None; starts: (..., T) -> y (..., T, H, D).
    """
    n = q.shape[-3]
    if n == 0:
        return xp.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=device_of(q))
    if keys is not None:
        k, v = mask_keys_and_values(xp, keys, k, v)
    positions = xp.arange(n, device=device_of(q))
    first = prefix_max(xp, xp.where(starts, positions, 0), axis=-1)  # [..., T]: where t's segment begins
    ends = xp.concat([starts[..., 1:], xp.ones_like(starts[..., :1])], axis=-1)  # t is its segment's last token
    stop = n - xp.flip(prefix_max(xp, xp.where(xp.flip(ends, axis=-1), positions, 0), axis=-1), axis=-1)  # e
    # Segment [b, e) fills places [2b, 2e): its keys first, then its queries. Place j lies in the
    # segment of token j // 2, and holds the key of token j - b or the query of token j - e.
    place = xp.arange(2 * n, device=device_of(q))
    b, e, segment = (_twice(xp, a) for a in (first, stop, segment_index(xp, starts)))  # [..., 2T]
    is_key = place < b + e  # the keys fill [2b, b + e)
    source = xp.where(is_key, place - b, n + place - e)  # into [as keys (T), as queries (T)]

    def laid_out(as_key: Array, as_query: Array) -> Array:
        return take_tokens(xp, xp.concat([as_key, as_query], axis=-3), source)

    y = causal(
        laid_out(q, q),
        laid_out(k, xp.full_like(k, -xp.inf)),
        laid_out(v, xp.zeros_like(v)),
        segment_ids=segment,
    )
    y = take_tokens(xp, y, positions + stop)  # the query copies' outputs: token t's is at e + t
    return y if mask is None else xp.where(mask[..., None, None], y, xp.zeros_like(y))


def _twice(xp: Any, a: Array) -> Array:
    """(..., T) -> (..., 2T), every entry twice: a[..., j // 2] at j."""
    return xp.reshape(xp.stack([a, a], axis=-1), (*a.shape[:-1], 2 * a.shape[-1]))
