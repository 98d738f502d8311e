"""The public causal form: checks the inputs, then runs the chunks block by block (or hands Dask arrays on).

The overview, with the bound under which a chunk is factored, is :mod:`latte_ref.causal`'s docstring.
"""

from __future__ import annotations

from array_api_compat import is_dask_array

from .._array import Array, mask_keys_and_values, mask_output, output_buffer
from .._checks import _prepare_qkv, check_chunk_size, check_flag
from .._dispatch import in_exact_arithmetic, is_traced, sequence_parallel
from .._layout import swap_time_and_heads
from ..segments import check_segment_ids
from ..state import LatteState, check_state, empty_state, warn_if_values_may_overflow, with_constant_frame
from .block import causal_block
from .sizes import DEFAULT_CHUNK_SIZE, _blocks


@in_exact_arithmetic
def causal(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    chunk_size: int | None = None,
    state: LatteState | None = None,
    return_state: bool = False,
    layout: str = "BTHD",
) -> Array | tuple[Array, LatteState]:
    r"""Causal latent attention in O(T·L·(C + D)), all chunks of C tokens at once.

    .. math::

        y_t = \sum_l p(l \mid t) \sum_{s \le t} p(s \mid l, t)\, v_s, \qquad
        p(s \mid l, t) = \frac{\exp k_{s,l}}{\sum_{s' \le t} \exp k_{s',l}}

    This is the recurrence of :func:`latte_ref.recurrent` evaluated a chunk at a
    time, with every chunk weighed against one reference (the running max at its
    first token) so that it becomes two matrix products; see the module docstring for the
    bound under which that is exact and for the per-token form used beyond it.
    Chunks are taken :data:`BLOCK_TOKENS` at a time, so memory is O(T·H·D) for the
    output plus O(BLOCK_TOKENS·H·(L + C + D)). Results do not depend on
    ``chunk_size`` beyond rounding.

    Parameters
    ----------
    q, k : array, shape (..., T, H, L)
        Latent logits of the queries and keys.
    v : array, shape (..., T, H, D)
        Values.
    mask : bool array, shape (..., T), optional
        True for a real token. Padded tokens leave the state unchanged and get output 0.
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row, never decreasing along T: a token attends only to
        the tokens of its own document (see :mod:`latte_ref.segments`).
    chunk_size : int, optional
        Tokens per chunk, C; :data:`DEFAULT_CHUNK_SIZE` when omitted. T need not be a multiple.
    state : LatteState, optional
        The state after the tokens that precede this call's (an empty history when omitted).
        With ``segment_ids``, it is the history of the call's first segment.
    return_state : bool
        Also return the state after the last token (which belongs to the last segment).
    layout : {"BTHD", "BHTD"}
        ``"BTHD"`` (default): q, k (..., T, H, L), v and y (..., T, H, D). ``"BHTD"``: head-first,
        (..., H, T, L) and (..., H, T, D), y too. k and v may have H_kv heads, a divisor of H
        (grouped-query attention: query head h reads K/V head h // (H / H_kv)).

    Returns
    -------
    y : array, shape (..., T, H, D)
        In the promoted dtype of the inputs (16-bit inputs are computed in float32).
    state : LatteState
        Only with ``return_state=True``; in the computation dtype.

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 100, 2, 4))
    >>> y, state = latte_ref.causal(q, k, v, chunk_size=16, return_state=True)
    >>> bool(np.allclose(y, latte_ref.recurrent(q, k, v)))
    True

    Two documents packed in one row, of 60 and 40 tokens, and a stream cut inside the second:
    the state after the first call is the history of the second call's first segment.

    >>> ids = latte_ref.segment_ids_from_cu_seqlens([0, 60, 100])
    >>> packed = latte_ref.causal(q, k, v, segment_ids=ids)
    >>> bool(np.allclose(packed[60:], latte_ref.causal(q[60:], k[60:], v[60:])))
    True
    >>> head, state = latte_ref.causal(q[:80], k[:80], v[:80], segment_ids=ids[:80], return_state=True)
    >>> tail = latte_ref.causal(q[80:], k[80:], v[80:], segment_ids=ids[80:], state=state)
    >>> bool(np.allclose(np.concatenate([head, tail]), packed))
    True
    """
    xp, q, k, v, out_dtype, dtype = _prepare_qkv(q, k, v, mask, layout=layout, segment_ids=segment_ids, state=state)
    check_flag("return_state", return_state)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else check_chunk_size(chunk_size)
    if state is not None:
        state = check_state(xp, state, q, v, dtype)
    starts = None if segment_ids is None else check_segment_ids(xp, segment_ids, q.shape[:-2], like=q)
    if is_dask_array(q):
        # A sequence chunked along T: Dask gets a graph that is parallel along T (see docs/distributed.md).
        result = sequence_parallel("dask").causal(
            q,
            k,
            v,
            mask=mask,
            segment_ids=segment_ids,
            chunk_size=chunk_size,
            state=state,
            return_state=return_state,
            out_dtype=out_dtype,
        )
        if not return_state:
            return swap_time_and_heads(xp, result, layout)
        return swap_time_and_heads(xp, result[0], layout), result[1]
    # The chunks hold their running maxima constant for autodiff: so must the state they start from.
    state = empty_state(xp, q, v, dtype) if state is None else with_constant_frame(xp, state)
    warn_if_values_may_overflow(xp, v, state_tokens=q.shape[-3])
    if mask is not None:
        k, v = mask_keys_and_values(xp, mask, k, v)

    y = output_buffer(xp, v)
    pieces = []
    for block, size in _blocks(q.shape[-3], chunk_size, traced=is_traced(q)):
        y_block, state = causal_block(
            xp,
            q[..., block, :, :],
            k[..., block, :, :],
            v[..., block, :, :],
            state,
            chunk_size=size,
            starts=None if starts is None else starts[..., block],
        )
        if y is None:
            pieces.append(y_block)
        else:
            y[..., block, :, :] = y_block
    if y is None:
        y = xp.concat(pieces, axis=-3) if pieces else xp.zeros_like(v)
    del pieces
    y = swap_time_and_heads(xp, xp.astype(mask_output(xp, mask, y), out_dtype, copy=False), layout)
    return (y, state) if return_state else y
