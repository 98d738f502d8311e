"""The parallel form of the model: every position at once, and the next-token loss."""

from __future__ import annotations

from .._array import Array, compute_dtype, device_of, namespace_of
from .._layer import Form, check_form, run_form
from ..causal import prefix_max
from ..segments import check_segment_ids
from .blocks import (
    _check_tokens,
    _compute_weights,
    embed,
    gated_mlp,
    latent_projections,
    layer_norm,
    merge_heads,
    sinusoidal_position,
)
from .config import DecodeState, LatteModel

__all__ = ["forward", "next_token_loss"]


def forward(
    params: LatteModel,
    tokens: Array,
    *,
    causal: bool = True,
    form: Form | None = None,
    return_state: bool = False,
    segment_ids: Array | None = None,
) -> Array | tuple[Array, DecodeState]:
    r"""Logits of every position at once: tokens (..., T) -> logits (..., T, V).

    .. math::

        \text{logits}_t = \mathrm{LN}(x^{(N)}_t)\, W_{\text{unembed}}, \qquad
        p(\text{token}_{t+1} \mid \text{tokens}_{\le t}) = \operatorname{softmax}(\text{logits}_t)

    Parameters
    ----------
    params : LatteModel
    tokens : integer array, shape (..., T)
    causal : bool
        Causal mixers (a language model) or bidirectional ones (an encoder).
    form : {None, "definition", "recurrent"}
        ``None`` is the fast path (:func:`latte_ref.causal`, chunked causal-parallel, or
        :func:`latte_ref.bidirectional`); ``"definition"`` the O(T²) oracle;
        ``"recurrent"`` the token-by-token scan (causal only).
    return_state : bool
        Also return the :class:`DecodeState` after the T tokens (fast causal path only),
        so that :func:`decode_step` can continue the sequence: a parallel prefill.
    segment_ids : integer array, shape (..., T), optional
        The document of each token of a packed row, never decreasing along T: every document
        is modelled as if alone, its positions counted from 0 (not with ``return_state``).

    Returns
    -------
    logits : array, shape (..., T, V), in the weights' dtype
    state : DecodeState, only with ``return_state=True``

    Examples
    --------
    >>> import numpy as np, latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_latents=8)
    >>> tokens = np.random.default_rng(0).integers(0, 11, size=(3, 20))
    >>> logits = lm.forward(model, tokens)
    >>> logits.shape, bool(np.allclose(logits, lm.forward(model, tokens, form="definition")))
    ((3, 20, 11), True)
    """
    xp, out_dtype, dtype, weights = _compute_weights(params)
    config = params.config
    _check_tokens(xp, tokens, "tokens", 1)
    check_form(form, causal)
    if return_state and (form is not None or not causal):
        raise ValueError("return_state needs the fast causal path (causal=True, form=None)")
    if return_state and segment_ids is not None:
        raise ValueError("return_state continues one sequence; prefill the last document alone, without segment_ids")

    n_tokens = tokens.shape[-1]
    positions = xp.arange(n_tokens, device=device_of(tokens))  # [T]
    if segment_ids is not None:  # each document's positions count from its first token
        starts = check_segment_ids(xp, segment_ids, tuple(tokens.shape), like=tokens)
        positions = positions - prefix_max(xp, xp.where(starts, positions, 0), axis=-1)  # [..., T]
    x = embed(xp, weights["embedding"], tokens)  # [..., T, d]
    x = x + sinusoidal_position(xp, positions, config.d_model, dtype)
    layer_states = []
    for block in weights["blocks"]:
        q, k, v = latent_projections(xp, layer_norm(xp, x, block["mixer_norm"]), block, config)  # [..., T, H, L|D]
        y, state = run_form(q, k, v, causal=causal, form=form, segment_ids=segment_ids)
        if state is not None:  # the fast causal form: kept for a parallel prefill
            layer_states.append(state)
        x = x + merge_heads(xp, y, block)
        x = x + gated_mlp(xp, layer_norm(xp, x, block["mlp_norm"]), block)
    logits = xp.astype(layer_norm(xp, x, weights["final_norm"]) @ weights["unembedding"], out_dtype)  # [..., T, V]
    if not return_state:
        return logits
    return logits, DecodeState(tuple(layer_states), xp.asarray(n_tokens, device=device_of(tokens)))


def next_token_loss(
    params: LatteModel, tokens: Array, *, form: Form | None = None, segment_ids: Array | None = None
) -> Array:
    r"""Mean cross-entropy of each next token: :math:`-\frac{1}{T-1} \sum_t \log p(\text{token}_{t+1} \mid \le t)`.

    tokens (..., T) with T >= 2 -> a 0-d array, averaged over the batch as well. With
    ``segment_ids`` (..., T), a packed row: a document's last token predicts nothing (the
    next document does not follow from it), and the mean is over the predictions left.

    Examples
    --------
    >>> import numpy as np, latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=11, d_model=16, n_layers=1, n_heads=2, n_latents=4)
    >>> loss = lm.next_token_loss(model, np.random.default_rng(0).integers(0, 11, size=(2, 9)))
    >>> loss.shape, bool(1.0 < float(loss) < 6.0)
    ((), True)
    """
    xp = namespace_of(tokens=tokens)
    if tokens.ndim < 1 or tokens.shape[-1] < 2:
        raise ValueError(f"tokens must have at least 2 positions, got shape {tuple(tokens.shape)}")
    inputs = None if segment_ids is None else segment_ids[..., :-1]
    logits = forward(params, tokens[..., :-1], form=form, segment_ids=inputs)  # [..., T-1, V]
    _, dtype = compute_dtype(xp, logits)
    logits = xp.astype(logits, dtype)
    shift = xp.max(logits, axis=-1, keepdims=True)
    log_p = logits - shift - xp.log(xp.sum(xp.exp(logits - shift), axis=-1, keepdims=True))  # [..., T-1, V]
    # A comparison with arange picks each target's log-probability without a gather.
    is_target = tokens[..., 1:, None] == xp.arange(logits.shape[-1], device=device_of(logits))  # [..., T-1, V]
    log_p_target = xp.sum(xp.where(is_target, log_p, xp.zeros_like(log_p)), axis=-1)  # [..., T-1]
    if segment_ids is None:
        return -xp.mean(log_p_target)
    predicts = segment_ids[..., 1:] == segment_ids[..., :-1]  # token t+1 is in t's document
    counted = xp.astype(predicts, log_p_target.dtype)
    return -xp.sum(log_p_target * counted) / xp.sum(counted)
