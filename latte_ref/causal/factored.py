"""The factored chunks: every key of a piece weighed against one reference R, two matrix products a chunk.

Exact to rounding while no key rises more than :func:`factoring_bound` above R;
:mod:`latte_ref.causal.block` sends the tokens beyond it to the per-token form.
"""

from __future__ import annotations

import math
from typing import Any

from .._array import Array, device_of, finite_or_zero, softmax, take_tokens
from .._dispatch import stop_gradient
from ..state import LatteState
from .chunks import _lower_triangle
from .pieces import Pieces, _where_continued
from .sizes import DEFAULT_CHUNK_SIZE


def factoring_bound(xp: Any, dtype: Any, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """How far a key may rise above its chunk's reference R for the factored chunk to be exact, with its gradient.

    The smaller of two bounds, in the dtype's tiny (smallest normal) and eps:

    - forward, g_f = -ln(tiny) + 3 ln(eps): every weight exp(k_s - R) is at most
      exp(g_f), about eps³ times the largest float, so sums and products of weights over
      a chunk, its latents and values of any ordinary size keep a margin of 1/eps³ from
      overflow. Underflow needs no bound: R is at most the running max m_t, so the
      normaliser a_t is at least 1 and every weight that matters to token t is a normal number;
    - backward, g_b = (-ln(tiny) + ln(eps)) / 2 - ln(C): the derivative of p(l | t) / a_t is
      -p(l | t) / a_t², and a_t reaches C exp(g). Below g_b, a_t² stays under eps / tiny, so
      p / a_t² is a normal number for every p(l | t) >= eps: the gradient is exact to rounding.

    For C = 64 that is 31.5 in float32 (16-bit inputs are computed in float32) and 332.0 in
    float64; the backward bound is the smaller one in both (docs/theory/gradients.md).

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref.causal import factoring_bound
    >>> round(factoring_bound(np, np.float32, 64), 1), round(factoring_bound(np, np.float64, 64), 1)
    (31.5, 332.0)
    """
    info = xp.finfo(dtype)
    tiny, eps = float(info.smallest_normal), float(info.eps)
    forward = -math.log(tiny) + 3 * math.log(eps)
    backward = (-math.log(tiny) + math.log(eps)) / 2 - math.log(max(chunk_size, 1))
    return min(forward, backward)


def _entry_max(xp: Any, k: Array, max_before: Array, pieces: Pieces | None) -> Array:
    """R, the running max at the first token of each piece: (..., N, 1, H, L), or (..., N, C, H, L) per token.

    Without segments a chunk is one piece and R_n = max(M_{n-1}, k_first). With them, a
    piece that begins inside the chunk starts a segment, so its R is its first key.
    """
    k = stop_gradient(k)  # R cancels out of every output: no gradient flows through its choice
    if pieces is None:
        return xp.maximum(max_before, k[..., 0, :, :])[..., None, :, :]
    first_key = take_tokens(xp, k, pieces.first)  # [..., N, C, H, L]: each token's piece's first key
    history = xp.where(pieces.continues[..., None, None], max_before[..., None, :, :], -xp.inf)
    entry_max = xp.maximum(history, first_key)
    # A piece whose R is nan or +inf has none to use: as with R = -inf, each of its finite keys is then
    # out of bounds and its tokens take the per-token form, so its nan never meets another piece's rows.
    return xp.where(entry_max < xp.inf, entry_max, -xp.inf)


def _local_summaries(
    xp: Any, weights: Array, v: Array, last_reference: Array, running_max: Array, pieces: Pieces | None
) -> LatteState:
    """Each chunk's own state, in the frame of M_n, from the factored weights exp(k_s - R) of its last piece.

    weights (..., N, C, H, L); v (..., N, C, H, D); last_reference, the last piece's R, and
    running_max M_n: (..., N, H, L). The move from R to M_n is a factor exp(R - M_n) <= 1.
    """
    if pieces is not None:
        weights = weights * xp.astype(pieces.in_last, weights.dtype)[..., None, None]
    rise = last_reference - finite_or_zero(xp, running_max)  # [..., N, H, L], <= 0 but for rounding
    to_end = xp.exp(xp.minimum(rise, xp.zeros_like(rise)))  # an array, not 0.0: no scalar promotion to trace
    w_hlc = xp.moveaxis(weights, -3, -1)  # [..., N, H, L, C]
    v_hcd = xp.moveaxis(v, -3, -2)  # [..., N, H, C, D]
    return LatteState(running_max, to_end * xp.sum(weights, axis=-3), to_end[..., None] * (w_hlc @ v_hcd))


def _out_of_bounds(xp: Any, k: Array, entry_max: Array, bound: float) -> Array:
    """Keys the factored form cannot take: non-finite or more than ``bound`` above R (padding, -inf, is fine).

    k: (..., N, C, H, L), entry_max R: (..., N, 1 or C, H, L) -> bool (..., N, C, H, L).
    """
    return (k != -xp.inf) & ~(k <= entry_max + bound)


def _factored(
    xp: Any,
    q: Array,
    weights: Array,
    v: Array,
    before: LatteState,
    carried: Array,
    pieces: Pieces | None,
    *,
    any_empty: bool = True,
    guard: bool | None = None,
) -> Array:
    """The factored chunks: two matrix products each, plus the carried state. y (..., N, C, H, D).

    weights: exp(k_s - R), (..., N, C, H, L), finite; carried: c_n, (..., N, H, L); ``before``
    holds the states before the chunks, (..., N, H, L[, D]). ``any_empty=False`` promises that
    every token has a history (a_t >= 1), which saves a pass. ``guard`` keeps a non-finite history
    of one piece from the later pieces of its chunk by a ``where``; None decides by reading the
    history (eager arrays), which a traced caller cannot do.
    """
    chunk_size = weights.shape[-3]
    carried_tok = carried[..., None, :, :]  # [..., N, 1, H, L]
    if pieces is None:
        guard = False
        reads = _lower_triangle(xp, chunk_size, weights.dtype, device_of(weights))  # [C(t), C(s)]
    else:
        reads = xp.astype(pieces.reads, weights.dtype)  # [..., N, C(t), C(s)]
        carried_tok = carried_tok * xp.astype(pieces.continues, carried.dtype)[..., None, None]  # [..., N, C, H, L]
        # A factor of 0 keeps the history from the later pieces unless it is not finite (0 * nan):
        # then a `where` after the products does.
        if guard is None:
            guard = not bool(xp.all(xp.isfinite(before.numerator)) & xp.all(xp.isfinite(before.normaliser)))
    # a_t for every token: the carried normaliser plus a prefix sum of the weights, as a lower-triangular product
    flat = (*weights.shape[:-2], weights.shape[-2] * weights.shape[-1])  # [..., N, C, H·L]
    prefix = xp.reshape(reads @ xp.reshape(weights, flat), weights.shape)
    history = carried_tok * before.normaliser[..., None, :, :]
    normaliser = prefix + (_where_continued(xp, pieces, history, axis=-3) if guard else history)  # >= 1 or 0

    p_latent_given_query = softmax(xp, q, axis=-1)  # [..., N, C, H, L]
    # A token with no history (a_t = 0) meets only weights of 0, so dividing its p(l | t) by 1 is exact.
    if any_empty:
        normaliser = xp.where(normaliser == 0, xp.ones_like(normaliser), normaliser)
    read = p_latent_given_query / normaliser
    read_hcl = xp.moveaxis(read, -3, -2)  # [..., N, H, C(t), L]
    # Causal by a product with 0/1 rather than a where: every entry is finite here, so 0 * entry is exactly 0.
    scores = (read_hcl @ xp.moveaxis(weights, -3, -1)) * reads[..., None, :, :]  # [..., N, H, C(t), C(s)]
    from_history = (read_hcl * xp.moveaxis(carried_tok, -3, -2)) @ before.numerator  # [..., N, H, C, D]
    y = scores @ xp.moveaxis(v, -3, -2) + (
        _where_continued(xp, pieces, from_history, axis=-2) if guard else from_history
    )
    return xp.moveaxis(y, -2, -3)
