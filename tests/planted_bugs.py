"""Deliberately wrong Latte implementations (NumPy), each with a mistake a real kernel could make.

The validator must reject every one of them (tests/test_validate.py). They are
written from scratch rather than by patching the core, the way a port would be.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import latte_ref


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _starts(segment_ids, *, late: int = 0, first: bool = False):
    """(..., T) bool, True where a document begins: where the id changes; at the first token only if ``first``.

    ``late`` moves every boundary that many tokens later: a document's first tokens count in the one before.
    """
    starts = segment_ids[..., 1:] != segment_ids[..., :-1]  # [..., T - 1]: token t + 1 begins a document
    before = np.zeros((*segment_ids.shape[:-1], 1 + late), dtype=bool)
    before[..., 0] = first
    starts = np.concatenate([before, starts], axis=-1)  # [..., T + late]
    return starts[..., : segment_ids.shape[-1]]


def _quadratic(q, k, v, *, future: int = 0, query_axis: int = -1, subtract_max: bool = True, documents=None):
    """Causal Latte through the T x T matrix, with the knobs the bugs below turn."""
    t = q.shape[-3]
    allowed = np.arange(t)[:, None] + future >= np.arange(t)[None, :]  # [T(t), T(s)]
    if documents is not None:  # only the tokens of t's own document
        same = documents[..., :, None] == documents[..., None, :]  # [..., T(t), T(s)]
        allowed = (allowed & same)[..., None, None, :, :]  # [..., 1, 1, T, T]
    keys = np.moveaxis(k, -3, -1)[..., None, :]  # [..., H, L, 1, T(s)]
    keys = np.where(allowed, keys, -np.inf)  # [..., H, L, T, T]
    shift = np.max(keys, axis=-1, keepdims=True) if subtract_max else 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        weights = np.exp(keys - shift)
        p_key = weights / np.sum(weights, axis=-1, keepdims=True)
    p_latent = np.moveaxis(_softmax(q, axis=query_axis), -3, -1)[..., None]  # [..., H, L, T, 1]
    a = np.sum(p_latent * p_key, axis=-3)  # [..., H, T, T]
    return np.moveaxis(a @ np.moveaxis(v, -3, -2), -2, -3).astype(q.dtype)


def causal_leak(q, k, v):
    """Token t also sees token t + 1."""
    return _quadratic(q, k, v, future=1)


def softmax_wrong_axis(q, k, v):
    """p(l | t) normalised over the sequence instead of the latents."""
    return _quadratic(q, k, v, query_axis=-3)


def no_max_subtraction(q, k, v):
    """exp(k) without subtracting a max: overflows for large logits."""
    return _quadratic(q, k, v, subtract_max=False)


def _recurrence(
    q,
    k,
    v,
    *,
    global_max=False,
    rescale=True,
    normaliser_lag=False,
    restarts=None,
    keep_max=False,
    state=None,
    return_state=False,
):
    """The per-token recurrence, with the knobs the bugs below turn. Arrays (..., T, H, L/D).

    ``restarts`` (..., T) bool: where the history is dropped before the token (a new document);
    with ``keep_max`` only the normaliser and numerator are, not the running max.
    """
    p = _softmax(q, axis=-1)
    if state is None:
        m = np.full(k.shape[:-3] + k.shape[-2:], -np.inf)
        a = np.zeros_like(m)
        s = np.zeros((*m.shape, v.shape[-1]))
    else:
        m, a, s = state
    top = np.max(k, axis=-3)
    outputs = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(k.shape[-3]):
            if restarts is not None:
                drop = restarts[..., t, None, None]  # [..., 1, 1]
                m = m if keep_max else np.where(drop, -np.inf, m)
                a, s = np.where(drop, 0.0, a), np.where(drop[..., None], 0.0, s)
            m_new = top if global_max else np.maximum(m, k[..., t, :, :])
            decay = np.exp(m - m_new) if rescale else np.ones_like(m)
            w = np.exp(k[..., t, :, :] - m_new)
            a = a * decay + w
            s = s * decay[..., None] + w[..., None] * v[..., t, :, None, :]
            m = m_new
            denominator = a - w if (normaliser_lag and t > 0) else a  # the current token left out
            outputs.append(np.sum(p[..., t, :, :, None] * s / denominator[..., None], axis=-2))
    y = np.stack(outputs, axis=-3).astype(q.dtype)
    return (y, (m, a, s)) if return_state else y


def normaliser_off_by_one(q, k, v):
    """The normaliser of token t stops at t - 1 while the numerator includes t."""
    return _recurrence(q, k, v, normaliser_lag=True)


def global_max(q, k, v):
    """One max over the whole sequence instead of the running max: early tokens underflow."""
    return _recurrence(q, k, v, global_max=True)


def state_not_rescaled(q_t, k_t, v_t, state, mask_t=None):
    """A ``step`` that moves the max forward without rescaling the normaliser and numerator."""
    y, state = _recurrence(
        q_t[..., None, :, :], k_t[..., None, :, :], v_t[..., None, :, :], rescale=False, state=state, return_state=True
    )
    return y[..., 0, :, :], state


def float32_inside(q, k, v):
    """A float64 request silently computed in float32 (and cast back)."""
    return latte_ref.causal(*(a.astype(np.float32) for a in (q, k, v))).astype(q.dtype)


def perturbed(q, k, v):
    """A 1e-3 relative error, as a lossy approximation would make."""
    return (latte_ref.causal(q, k, v) * (1 + 1e-3)).astype(q.dtype)


def mask_ignored_for_keys(q, k, v, mask=None):
    """Padding zeroed in the output but still attended to as keys."""
    y = latte_ref.causal(q, k, v)
    return y if mask is None else np.where(mask[..., None, None], y, 0).astype(q.dtype)


def state_dropped(q, k, v, state=None, return_state=False):
    """Accepts ``state=`` and returns one, but starts every call from an empty history."""
    return latte_ref.causal(q, k, v, return_state=return_state)


def segment_boundary_late(q, k, v, segment_ids=None):
    """Packed rows whose boundaries are found one token late: each document's first token reads the one before."""
    documents = None if segment_ids is None else np.cumsum(_starts(segment_ids, late=1), axis=-1)
    return _quadratic(q, k, v, documents=documents)


def state_not_reset_on_chunk_edge(q, k, v, segment_ids=None):
    """A kernel in chunks of 64 tokens that empties its state where a document starts inside a chunk,
    but carries the state of the document before into one that starts on a chunk's first token."""
    restarts = None if segment_ids is None else _starts(segment_ids)
    if restarts is not None:
        restarts = restarts & (np.arange(q.shape[-3]) % 64 != 0)
    return _recurrence(q, k, v, restarts=restarts)


def running_max_not_reset(q, k, v, segment_ids=None):
    """A new document empties the normaliser and numerator but keeps the running max of the one before."""
    restarts = None if segment_ids is None else _starts(segment_ids)
    return _recurrence(q, k, v, restarts=restarts, keep_max=True)


def first_token_starts_a_document(q, k, v, segment_ids=None, state=None, return_state=False):
    """Starts found as ``[True, ids[1:] != ids[:-1]]``: every call drops the state it is given."""
    restarts = None if segment_ids is None else _starts(segment_ids, first=True)
    return _recurrence(q, k, v, restarts=restarts, state=state, return_state=return_state)


def padding_read_in_documents(q, k, v, mask=None, segment_ids=None):
    """With ``segment_ids``, padding zeroed in the output but still read as keys within its document."""
    if segment_ids is None:
        return latte_ref.causal(q, k, v, mask=mask)
    y = latte_ref.causal(q, k, v, segment_ids=segment_ids)
    return y if mask is None else np.where(mask[..., None, None], y, 0).astype(q.dtype)


# name -> (candidate, validate keyword arguments, the cases expected to catch it at least)
PLANTED: dict[str, tuple[Any, dict[str, Any]]] = {
    "causal_leak": (causal_leak, {"form": "causal"}),
    "softmax_wrong_axis": (softmax_wrong_axis, {"form": "causal"}),
    "no_max_subtraction": (no_max_subtraction, {"form": "causal"}),
    "normaliser_off_by_one": (normaliser_off_by_one, {"form": "causal"}),
    "global_max": (global_max, {"form": "causal"}),
    "state_not_rescaled": (state_not_rescaled, {"form": "step"}),
    "float32_inside": (float32_inside, {"form": "causal", "dtype": "float64"}),
    "perturbed_1e-3": (perturbed, {"form": "causal"}),
    "mask_ignored_for_keys": (mask_ignored_for_keys, {"form": "causal", "with_mask": True}),
    "state_dropped": (state_dropped, {"form": "causal", "with_state": True}),
    "segment_boundary_late": (segment_boundary_late, {"form": "causal", "with_segments": True}),
    "state_not_reset_on_chunk_edge": (state_not_reset_on_chunk_edge, {"form": "causal", "with_segments": True}),
    "running_max_not_reset": (running_max_not_reset, {"form": "causal", "with_segments": True}),
    "first_token_starts_a_document": (
        first_token_starts_a_document,
        {"form": "causal", "with_segments": True, "with_state": True},
    ),
    "padding_read_in_documents": (
        padding_read_in_documents,
        {"form": "causal", "with_segments": True, "with_mask": True},
    ),
}
