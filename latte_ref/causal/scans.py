"""The states along the chunks: each chunk's maxima and summary, and the states before every chunk.

The running maxima at the chunks' ends are known in advance (a prefix max over the chunks'
maxima), so the states follow by a linear recurrence: a loop for eager arrays, a doubling
scan of the maps x -> d x + b for traced ones.
"""

from __future__ import annotations

from typing import Any

from .._array import Array, finite_or_zero
from .._dispatch import stop_gradient
from ..state import LatteState
from .maxima import prefix_max, segmented_prefix_max
from .pieces import Pieces


def last_piece(xp: Any, pieces: Pieces | None, k: Array, v: Array) -> tuple[Array, Array]:
    """k and v (..., N, C, H, ·) with the tokens outside each chunk's last piece left out (k = -inf, v = 0)."""
    if pieces is None:
        return k, v
    last = pieces.in_last[..., None, None]  # [..., N, C, 1, 1]
    return xp.where(last, k, -xp.inf), xp.where(last, v, xp.zeros_like(v))


def chunk_maxima(xp: Any, k_last: Array, state: LatteState, pieces: Pieces | None) -> tuple[Array, Array, Array]:
    """M_n and M_{n-1}, the running maxima after and before each chunk, and the decay d_n: (..., N, H, L) each.

    k_last: the keys that reach the state after their chunk (the last piece's). M_n is a
    prefix max over the chunks, started again where a segment starts; d_n = exp(M_{n-1} - M_n),
    and 0 where the chunk's last piece does not continue the history (nothing before it reaches it).
    """
    # Running maxima are frames that cancel out of every output: constants for autodiff (see _dispatch).
    chunk_max = stop_gradient(xp.max(k_last, axis=-3))  # [..., N, H, L]
    history = stop_gradient(state.running_max)[..., None, :, :]
    if pieces is None:
        running_max = xp.maximum(prefix_max(xp, chunk_max, axis=-3), history)
    else:
        restarts = pieces.restarts[..., None, None]  # [..., N, 1, 1]
        running_max, started = segmented_prefix_max(xp, chunk_max, restarts, axis=-3)
        running_max = xp.where(started, running_max, xp.maximum(running_max, history))
    max_before = xp.concat([history, running_max[..., :-1, :, :]], axis=-3)
    reached = max_before if pieces is None else xp.where(restarts, -xp.inf, max_before)
    decay = xp.exp(reached - finite_or_zero(xp, running_max))  # <= 1, and 0 for an empty or dropped history
    return running_max, max_before, decay


def summaries(xp: Any, k: Array, v: Array, running_max: Array) -> LatteState:
    """Each chunk's own state in the frame of M_n: k (..., N, C, H, L), v (..., N, C, H, D), M_n (..., N, H, L)."""
    weights = xp.exp(k - finite_or_zero(xp, running_max)[..., None, :, :])  # [..., N, C, H, L]
    return LatteState(running_max, xp.sum(weights, axis=-3), xp.moveaxis(weights, -3, -1) @ xp.moveaxis(v, -3, -2))


def carry(
    xp: Any,
    state: LatteState,
    max_before: Array,
    decay: Array,
    local: LatteState,
    pieces: Pieces | None,
    *,
    traced: bool,
) -> tuple[LatteState, LatteState]:
    """The state before every chunk (each in its own running max's frame) and the state after the last.

    S_before[0] = state;  S_before[n+1] = d_n S_before[n] + local[n]  (and likewise the normaliser),
    or local[n] alone where a segment starts in chunk n: a ``where``, not d_n = 0, so that a nan
    in one document's state stays there.
    Eager arrays run the recurrence as a loop over the N chunks (cheap: two small
    products per chunk); traced ones as a log-depth doubling scan, which keeps the
    graph short. Both are exact: the running maxima, and with them d_n, are known.
    """
    running_max = local.running_max  # [..., N, H, L]
    restarts = None if pieces is None else pieces.restarts[..., None, None]  # [..., N, 1, 1]
    scan = _doubling_scan if traced else _loop_scan
    normaliser, numerator = scan(xp, decay, restarts, local.normaliser, local.numerator, state)
    before = LatteState(max_before, normaliser[..., :-1, :, :], numerator[..., :-1, :, :, :])
    after = LatteState(running_max[..., -1, :, :], normaliser[..., -1, :, :], numerator[..., -1, :, :, :])
    return before, after


def _loop_scan(
    xp: Any, decay: Array, restarts: Array | None, a_local: Array, s_local: Array, state: LatteState
) -> tuple[Array, Array]:
    """States at the N + 1 chunk boundaries by the recurrence, one chunk at a time: (..., N+1, H, L[, D])."""
    a, s = state.normaliser, state.numerator
    normalisers, numerators = [a], [s]
    for n in range(decay.shape[-3]):
        d = decay[..., n, :, :]  # [..., H, L]
        a = a * d + a_local[..., n, :, :]
        s = s * d[..., None] + s_local[..., n, :, :, :]
        if restarts is not None:
            r = restarts[..., n, :, :]  # [..., 1, 1]
            a = xp.where(r, a_local[..., n, :, :], a)
            s = xp.where(r[..., None], s_local[..., n, :, :, :], s)
        normalisers.append(a)
        numerators.append(s)
    return xp.stack(normalisers, axis=-3), xp.stack(numerators, axis=-4)


def _doubling_scan(
    xp: Any, decay: Array, restarts: Array | None, a_local: Array, s_local: Array, state: LatteState
) -> tuple[Array, Array]:
    """The same states by a Hillis-Steele scan of the maps x -> d x + b, composed in log2(N) rounds.

    With segments the maps are x -> b where a segment starts (r), else d x + b; composed,
    (r, d, b) after (r', d', b') is (r or r', d d', b if r else d b' + b).
    """
    d = decay  # [..., N, H, L]
    a, s = a_local, s_local
    r = None if restarts is None else xp.broadcast_to(restarts, d.shape)  # [..., N, H, L]
    reach, n = 1, decay.shape[-3]
    while reach < n:
        # Position i takes in the map ending at i - reach.
        a_then = d[..., reach:, :, :] * a[..., :-reach, :, :] + a[..., reach:, :, :]
        s_then = d[..., reach:, :, :, None] * s[..., :-reach, :, :, :] + s[..., reach:, :, :, :]
        if r is not None:
            r_here = r[..., reach:, :, :]
            a_then = xp.where(r_here, a[..., reach:, :, :], a_then)
            s_then = xp.where(r_here[..., None], s[..., reach:, :, :, :], s_then)
            r = xp.concat([r[..., :reach, :, :], r_here | r[..., :-reach, :, :]], axis=-3)
        a = xp.concat([a[..., :reach, :, :], a_then], axis=-3)
        s = xp.concat([s[..., :reach, :, :, :], s_then], axis=-4)
        d = xp.concat([d[..., :reach, :, :], d[..., reach:, :, :] * d[..., :-reach, :, :]], axis=-3)
        reach *= 2
    # Apply the composed maps to the incoming state; the first boundary is the state itself.
    a_all = d * state.normaliser[..., None, :, :] + a
    s_all = d[..., None] * state.numerator[..., None, :, :, :] + s
    if r is not None:
        a_all, s_all = xp.where(r, a, a_all), xp.where(r[..., None], s, s_all)
    a = xp.concat([state.normaliser[..., None, :, :], a_all], axis=-3)
    s = xp.concat([state.numerator[..., None, :, :, :], s_all], axis=-4)
    return a, s
