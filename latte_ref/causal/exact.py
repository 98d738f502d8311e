"""The per-token chunk: every token weighed against its own running max, exact for any logits.

The factored chunks (:mod:`latte_ref.causal.factored`) hand it the tokens beyond their
bound; on traced arrays every chunk takes it.
"""

from __future__ import annotations

from typing import Any

from .._array import (
    Array,
    causal_weighted_sum,
    device_of,
    finite_or_zero,
    safe_divide,
    softmax,
    weighted_sum_where,
)
from .._dispatch import stop_gradient
from ..state import LatteState, with_constant_frame
from .maxima import prefix_max
from .pieces import Pieces, _where_continued


def causal_chunk(
    xp: Any, q: Array, k: Array, v: Array, state: LatteState, *, pieces: Pieces | None = None
) -> tuple[Array, LatteState]:
    """One chunk of C tokens against the state of everything before it, with every token's own running max.

    The per-token form: exact for any logits, at the cost of C·L exponentials per
    token. q, k: (..., C, H, L) (k is -inf for padding); v: (..., C, H, D).
    For query t and key s <= t of the chunk, latent l::

        m_t       = max(m_prev, max_{s<=t} k_s)                running max, as in the recurrence
        w[t, s]   = exp(k_s - m_t)                              C x C weights per latent
        a_t       = a_prev exp(m_prev - m_t) + sum_s w[t, s]    normaliser
        y_t       = sum_l p(l|t) / a_t (S_prev exp(m_prev - m_t) + sum_s w[t, s] v_s)

    With ``pieces`` (of chunks (..., C), see :class:`Pieces`), the sums and maxima over
    s <= t keep to t's piece, and only the first piece reads the earlier state.

    The pairwise weights are laid out (..., H, C(t), L, C(s)) so that the sum over
    keys runs along the contiguous last axis and the sum over latents is a
    batched (1 x L) @ (L x C) matrix product.
    """
    n = k.shape[-3]
    state = with_constant_frame(xp, state)  # its running max is a frame here, like the chunk's own
    p_latent_given_query = xp.moveaxis(softmax(xp, q, axis=-1), -3, -2)  # [..., H, C, L]
    k_hls = xp.moveaxis(k, -3, -1)  # [..., H, L, C(s)]
    # The running maxima are frames: they cancel out of every output, so no gradient flows through them.
    k_frame = stop_gradient(k_hls)
    history_max = stop_gradient(state.running_max)[..., None, :]  # [..., H, 1, L]
    if pieces is None:
        visible = _key_is_visible(xp, n, device_of(k))  # [C(t), 1, C(s)]
        running_max = xp.maximum(prefix_max(xp, xp.moveaxis(k_frame, -1, -2), axis=-2), history_max)  # [..., H, C, L]
    else:
        visible = pieces.reads[..., None, :, None, :]  # [..., 1, C(t), 1, C(s)]
        history_max = xp.where(pieces.continues[..., None, :, None], history_max, -xp.inf)  # [..., H, C, L]
        piece_max = xp.max(xp.where(visible, k_frame[..., None, :, :], -xp.inf), axis=-1)  # [..., H, C(t), L]
        running_max = xp.maximum(piece_max, history_max)
    shift = finite_or_zero(xp, running_max)
    # Mask the exponent, not the weight: exp(k_s - m_t) for s > t could overflow. A `where`, not the
    # addition of -inf, so that a nan key at s stays out of the rows t < s (nan + -inf is nan).
    exponent = k_hls[..., None, :, :] - shift[..., None]  # [..., H, C(t), L, C(s)]
    exponent = xp.where(visible, exponent, -xp.inf)
    weights = xp.exp(exponent)
    del exponent
    carried = xp.exp(history_max - shift)  # [..., H, C, L] rescales the earlier state (0 where it is not read)
    from_history = _where_continued(xp, pieces, state.normaliser[..., None, :] * carried, axis=-2)
    normaliser = from_history + xp.sum(weights, axis=-1)  # [..., H, C, L]

    read = safe_divide(xp, p_latent_given_query, normaliser)  # [..., H, C, L]: p(l | t) / a_t
    # [..., H, C, 1, L] @ [..., H, C, L, C] -> [..., H, C(t), C(s)]
    attention = (read[..., None, :] @ weights)[..., 0, :]
    v_hcd = xp.moveaxis(v, -3, -2)  # [..., H, C, D]
    # Not `attention @ v`: a nan value must not reach the rows that do not read it through 0 * nan.
    if pieces is None:
        within = causal_weighted_sum(xp, attention, v_hcd)
    else:
        within = weighted_sum_where(xp, attention, v_hcd, pieces.reads[..., None, :, :])
    y = within + _where_continued(xp, pieces, (read * carried) @ state.numerator, axis=-2)  # [..., H, C, D]

    history = state.numerator * carried[..., -1, :, None]  # [..., H, L, D]
    if pieces is not None:  # the last token's piece may begin in the chunk: then no history reaches the state
        history = xp.where(pieces.continues[..., -1, None, None, None], history, xp.zeros_like(history))
    new_state = LatteState(
        running_max=running_max[..., -1, :],
        normaliser=normaliser[..., -1, :],
        # The chunk's keys seen from its last token: [..., H, L, C(s)] @ [..., H, C, D].
        numerator=history + weights[..., -1, :, :] @ v_hcd,
    )
    return xp.moveaxis(y, -2, -3), new_state


def _key_is_visible(xp: Any, n: int, device: Any) -> Array:
    """(C(t), 1, C(s)): True where s <= t."""
    positions = xp.arange(n, device=device)
    return (positions[:, None] >= positions[None, :])[:, None, :]
