"""The definition of Latte, computed literally: the oracle the fast forms are tested against."""

from __future__ import annotations

from typing import Any

from ._array import Array, causal_weighted_sum, device_of, keys_taking_part, softmax, weighted_sum_where
from ._checks import _prepare_qkv, check_flag
from ._dispatch import in_exact_arithmetic
from .segments import check_segment_ids, segment_index, segment_starts

__all__ = ["attention_matrix", "definition"]


@in_exact_arithmetic
def attention_matrix(
    q: Array,
    k: Array,
    *,
    causal: bool,
    mask: Array | None = None,
    key_mask: Array | None = None,
    segment_ids: Array | None = None,
    layout: str = "BTHD",
) -> Array:
    r"""The Tq x Tk attention that Latte implies: :math:`p(s \mid t) = \sum_l p(s \mid l, t)\, p(l \mid t)`.

    .. math::

        p(l \mid t) = \operatorname{softmax}_l q_{t,l}, \qquad
        p(s \mid l, t) = \frac{\exp k_{s,l}}{\sum_{s' \in S(t)} \exp k_{s',l}}, \qquad
        S(t) = \begin{cases} \{s \le t\} & \text{causal} \\ \text{all } s & \text{bidirectional} \end{cases}

    With ``segment_ids``, S(t) keeps only the tokens of t's own segment.

    Costs O(T²·L) time and memory: it is for inspection and testing, not for long sequences.

    The result is head-first, (..., H, T, T), unlike the inputs and every form's output,
    (..., T, H, ·): one T x T matrix per head. ``y = a @ v`` needs v head-first too,
    ``moveaxis(v, -3, -2)``, and the product moved back, ``moveaxis(a @ v_h, -2, -3)``.

    Parameters
    ----------
    q : array, shape (..., Tq, H, L)
    k : array, shape (..., Tk, H, L)
        Tk = Tq for self-attention; any Tk for cross-attention (bidirectional only).
    causal : bool
        Whether S(t) stops at t (needs Tq = Tk).
    mask : bool array, shape (..., T), optional
        Padded tokens are in no S(t), and their own rows are 0 (needs Tq = Tk).
    key_mask : bool array, shape (..., Tk), optional
        Keys left out of every S(t); the rows stay as they are.
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row, never decreasing along T (needs Tq = Tk).
    layout : {"BTHD", "BHTD"}
        Of q and k: (..., T, H, L) or head-first (..., H, T, L); the result is head-first either way.
        k may have H_kv heads, a divisor of H (grouped-query attention).

    Returns
    -------
    a : array, shape (..., H, Tq, Tk)
        ``a[..., h, t, s] = p(s | t)``; each real token's row sums to 1 (0 if it has no key), so ``y = a @ v``
        per head.

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> q, k = np.random.default_rng(0).normal(size=(2, 4, 1, 3))
    >>> a = latte_ref.attention_matrix(q, k, causal=True)
    >>> a.shape, bool(np.allclose(a.sum(-1), 1)), bool(np.all(np.triu(a[0], 1) == 0))
    ((1, 4, 4), True, True)
    >>> v = np.random.default_rng(1).normal(size=(4, 1, 2))  # (T, H, D)
    >>> y = np.moveaxis(a @ np.moveaxis(v, -3, -2), -2, -3)  # back to (T, H, D)
    >>> bool(np.allclose(y, latte_ref.causal(q, k, v)))
    True
    """
    xp, q, k, _, out_dtype, _ = _prepare_qkv(
        q, k, k, mask, names=("q", "k", "k"), cross=True, key_mask=key_mask, layout=layout, segment_ids=segment_ids
    )
    check_flag("causal", causal)
    n, n_keys = q.shape[-3], k.shape[-3]
    for name, given in (("causal attention", causal), ("segment_ids", segment_ids is not None)):
        if given and n != n_keys:
            raise ValueError(f"{name} needs q and k of one length, got Tq={n} and Tk={n_keys}")
    starts = None if segment_ids is None else check_segment_ids(xp, segment_ids, q.shape[:-2], like=q)
    if n == 0 or n_keys == 0:
        return xp.zeros((*q.shape[:-3], q.shape[-2], n, n_keys), dtype=out_dtype, device=device_of(q))

    allowed = _reads(xp, n, n_keys, causal=causal, mask=mask, key_mask=key_mask, starts=starts, device=device_of(q))
    allowed = allowed[..., None, None, :, :]  # [..., 1, 1, Tq, Tk]

    p_latent_given_query = softmax(xp, q, axis=-1)  # [..., T, H, L]
    keys = xp.moveaxis(k, -3, -1)[..., None, :]  # [..., H, L, 1, T(s)]
    p_key_given_latent = softmax(xp, xp.where(allowed, keys, -xp.inf), axis=-1)  # [..., H, L, T(t), T(s)]
    p_latent = xp.moveaxis(p_latent_given_query, -3, -1)[..., None]  # [..., H, L, T(t), 1]
    a = xp.sum(p_latent * p_key_given_latent, axis=-3)  # [..., H, T(t), T(s)]
    return xp.astype(a, out_dtype)


@in_exact_arithmetic
def definition(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    mask: Array | None = None,
    key_mask: Array | None = None,
    segment_ids: Array | None = None,
    layout: str = "BTHD",
) -> Array:
    r"""Latte from its definition: :math:`y_t = \sum_s p(s \mid t)\, v_s`, with the matrix of :func:`attention_matrix`.

    Parameters
    ----------
    q : array, shape (..., Tq, H, L)
    k : array, shape (..., Tk, H, L)
        Tk = Tq for self-attention; any Tk for cross-attention (bidirectional only).
    v : array, shape (..., Tk, H, D)
    causal : bool
    mask : bool array, shape (..., T), optional
        True for a real token (needs Tq = Tk): padded tokens are no key and get output 0.
    key_mask : bool array, shape (..., Tk), optional
        True for a key that takes part.
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row (never decreasing along T): a token attends only to its
        own document's tokens.
    layout : {"BTHD", "BHTD"}
        ``"BTHD"`` (default): q, k (..., T, H, L), v and y (..., T, H, D). ``"BHTD"``: head-first,
        (..., H, T, L) and (..., H, T, D), y too. k and v may have H_kv heads, a divisor of H
        (grouped-query attention: query head h reads K/V head h // (H / H_kv)).

    Returns
    -------
    y : array, shape (..., Tq, H, D)

    Examples
    --------
    >>> import numpy as np, latte_ref
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 6, 2, 4))
    >>> bool(np.allclose(latte_ref.definition(q, k, v, causal=False), latte_ref.bidirectional(q, k, v)))
    True
    """
    xp, q, k, v, out_dtype, _ = _prepare_qkv(
        q, k, v, mask, cross=True, key_mask=key_mask, layout=layout, segment_ids=segment_ids
    )
    check_flag("causal", causal)
    a = attention_matrix(q, k, causal=causal, mask=mask, key_mask=key_mask, segment_ids=segment_ids)  # [..., H, Tq, Tk]
    keys = keys_taking_part(mask, key_mask)
    if keys is not None:
        v = xp.where(keys[..., None, None], v, xp.zeros_like(v))  # a left-out value is never read
    v_htd = xp.moveaxis(v, -3, -2)  # [..., H, T, D]
    # A nan v_s reaches only the rows that read s, never through a weight of exactly 0.
    if segment_ids is not None:
        starts = segment_starts(xp, segment_ids)
        reads = _reads(xp, *a.shape[-2:], causal=causal, mask=None, key_mask=None, starts=starts, device=device_of(a))
        y = weighted_sum_where(xp, a, v_htd, reads[..., None, :, :])
    else:
        y = causal_weighted_sum(xp, a, v_htd) if causal else a @ v_htd
    return xp.astype(y if layout == "BHTD" else xp.moveaxis(y, -2, -3), out_dtype)


def _reads(
    xp: Any,
    n: int,
    n_keys: int,
    *,
    causal: bool,
    mask: Array | None,
    key_mask: Array | None,
    starts: Array | None,
    device: Any,
) -> Array:
    """(..., Tq, Tk) bool: whether key s is in S(t), the keys that query t reads."""
    allowed = xp.ones((n, n_keys), dtype=xp.bool, device=device)  # [Tq(t), Tk(s)]
    if causal:
        positions = xp.arange(n, device=device)
        allowed = positions[:, None] >= positions[None, :]
    if mask is not None:
        allowed = allowed & mask[..., None, :] & mask[..., :, None]  # [..., T, T]
    if key_mask is not None:
        allowed = allowed & key_mask[..., None, :]  # [..., Tq, Tk]
    if starts is not None:
        segment = segment_index(xp, starts)  # [..., T]
        allowed = allowed & (segment[..., :, None] == segment[..., None, :])  # [..., T, T]
    return allowed
