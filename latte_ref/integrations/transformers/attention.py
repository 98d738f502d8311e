r"""The "latte" attention and mask functions for transformers' ``AttentionInterface`` and ``AttentionMaskInterface``.

Each head's query projection (head_dim numbers) is used as Latte's L latent logits of that
head, the key projection likewise and the value projection as the values, so L = D = head_dim:

.. math::

    y_t = \sum_l \operatorname{softmax}_l(q_t)_l \sum_{s \le t}
          \frac{\exp k_{s,l}}{\sum_{s' \le t} \exp k_{s',l}}\, v_s

(over all s for a bidirectional module). transformers hands the projections over as
(B, H, T, head_dim); Latte's forms take (B, T, H, L). The transposes and the repetition of
grouped key/value heads are the small helpers :func:`_to_latte`, :func:`_repeat_heads` and
:func:`_group_state`, kept apart so that forms taking ``(B, H, T, D)`` and grouped heads can
replace them.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    prepare_padding_mask,
)
from transformers.modeling_utils import AttentionInterface

from ...bidirectional import bidirectional
from ...causal import causal
from ...recurrent import step
from ...state import LatteState
from .cache import LatteCacheLayer, claim

__all__ = ["latte_attention_forward", "latte_mask", "register"]

NAME = "latte"


def _to_latte(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) as transformers lays heads out -> (B, T, H, D) as Latte's forms take them (and back)."""
    return x.transpose(1, 2)


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, T, H_kv, D) -> (B, T, H_kv·groups, D): query head h reads key/value head h // groups (as ``repeat_kv``)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


def _ungroup_state(state: LatteState | None, groups: int) -> LatteState | None:
    """A state of H_kv heads as the H = H_kv·groups heads of the forms (each group's heads hold the same state)."""
    if state is None or groups == 1:
        return state
    return LatteState(*(a.repeat_interleave(groups, dim=1) for a in state))


def _group_state(state: LatteState, groups: int) -> LatteState:
    """Back to one state per key/value head: the heads of a group read the same keys and values, so hold one state."""
    return state if groups == 1 else LatteState(*(a[:, ::groups] for a in state))


def _key_mask(attention_mask: Any, length: int) -> torch.Tensor | None:
    """The (B, length) bool mask of the last ``length`` key positions (True = a real token), or None (no padding).

    Takes what :func:`latte_mask` returns, the 2D padding mask (B, >= length), or a prepared 4D mask
    (B, 1 | H, Tq, >= length), boolean (True = attend) or additive (0 = attend, the dtype's minimum =
    do not): a key takes part when some query may attend it, which a causal or bidirectional mask
    allows for every real key (at least the query at the key's own position does).
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim not in (2, 4):
        raise ValueError(
            "attention_mask: the 'latte' attention takes a (B, T) padding mask or a 4D mask, got"
            f" {type(attention_mask).__name__} of shape {tuple(getattr(attention_mask, 'shape', ()))}"
        )
    if attention_mask.shape[-1] < length:
        raise ValueError(
            f"attention_mask: covers {attention_mask.shape[-1]} positions, fewer than the {length} keys of this call"
        )
    mask = attention_mask[..., -length:]
    if mask.dtype != torch.bool:
        mask = (mask > torch.finfo(mask.dtype).min) if mask.is_floating_point() and mask.ndim == 4 else mask != 0
    return mask if mask.ndim == 2 else mask.any(dim=1).any(dim=1)


def _causal_with_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, layer: LatteCacheLayer, groups: int
) -> torch.Tensor:
    """The new tokens through the layer's state: one step for one token, the chunked causal form for more."""
    state = _ungroup_state(layer.state, groups)
    if q.shape[1] == 1:
        y_t, state = step(q[:, 0], k[:, 0], v[:, 0], state, mask_t=None if mask is None else mask[:, 0])
        y = y_t[:, None]
    else:
        y, state = causal(q, k, v, mask=mask, state=state, return_state=True)
    layer.state = _group_state(state, groups)
    return y


def latte_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Latte in place of softmax attention, with the signature of transformers' ``AttentionInterface``.

    Parameters
    ----------
    module : torch.nn.Module
        The attention module; ``module.is_causal`` (or an ``is_causal`` keyword) picks
        :func:`latte_ref.causal` or :func:`latte_ref.bidirectional`.
    query : tensor, shape (B, H, Tq, L)
        Latent logits of the queries, L = head_dim.
    key : tensor, shape (B, H_kv, Tk, L)
        Latent logits of the keys; H_kv divides H (grouped-query attention: query head h reads
        key/value head h // (H / H_kv)).
    value : tensor, shape (B, H_kv, Tk, D)
    attention_mask : tensor or None
        What :func:`latte_mask` made (the (B, T) padding mask, True = real token), or a 4D mask;
        only which keys are real is read from it.
    scaling : float, optional
        Ignored. It is the 1/sqrt(d) of a scaled dot product; Latte's q and k are not multiplied
        with each other but are each a softmax's logits (over latents for q, over time for k),
        used as they come, as in the paper. A scale would only be a fixed temperature that the
        projections learn anyway.
    dropout : float
        Ignored, with a warning when positive: Latte forms no (Tq, Tk) matrix of probabilities to drop.
    **kwargs
        ``is_causal`` is read; transformers' other keywords (position ids, ...) are not needed.

    Returns
    -------
    attn_output : tensor, shape (B, Tq, H, D)
        In query's dtype.
    attn_weights : None
        Latte has no attention matrix to return.

    With a :class:`LatteCache` the new tokens run through the layer's state (see
    :mod:`latte_ref.integrations.transformers.cache`). With a cache that hands back all past
    keys and values (``DynamicCache``, Tk > Tq) the causal form runs over the Tk positions and
    the last Tq outputs are kept: correct, but O(Tk) per call.
    """
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    if dropout > 0.0:
        warnings.warn(
            f"dropout: the 'latte' attention ignores attention dropout ({dropout}); it has no attention matrix",
            RuntimeWarning,
            stacklevel=2,
        )
    heads, kv_heads = query.shape[1], key.shape[1]
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4 or heads % kv_heads or value.shape[1] != kv_heads:
        raise ValueError(
            f"key: the 'latte' attention needs query (B, H, Tq, L), key (B, H_kv, Tk, L) and value (B, H_kv, Tk, D)"
            f" with H_kv dividing H, got {tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
        )
    groups = heads // kv_heads
    layer = claim(key)
    q = _to_latte(query)
    k, v = (_repeat_heads(_to_latte(x), groups) for x in (key, value))
    t_q, t_k = q.shape[1], k.shape[1]
    mask = _key_mask(attention_mask, t_k)
    if not is_causal:
        if layer is not None:
            raise ValueError(
                "cache (past_key_values): a LatteCache serves causal attention only, this module is bidirectional"
            )
        y = bidirectional(q, k, v, mask=mask) if t_q == t_k else bidirectional(q, k, v, key_mask=mask)
    elif layer is not None:
        if t_q != t_k:
            raise ValueError(f"key: a LatteCache layer needs as many keys as queries, got {t_k} and {t_q}")
        y = _causal_with_cache(q, k, v, mask, layer, groups)
    elif t_k == t_q:
        y = causal(q, k, v, mask=mask)
    elif t_k > t_q:
        # The earlier positions' keys and values came from a cache that keeps them (DynamicCache): run them as
        # tokens whose outputs are dropped; a zero query reads the state like any other.
        pad = q.new_zeros((q.shape[0], t_k - t_q, *q.shape[2:]))
        y_all = causal(torch.cat([pad, q], dim=1), k, v, mask=mask)
        assert isinstance(y_all, torch.Tensor)
        y = y_all[:, t_k - t_q :]
    else:
        raise ValueError(f"key: causal attention needs at least as many keys as queries, got {t_k} and {t_q}")
    assert isinstance(y, torch.Tensor)
    return y.to(query.dtype), None


def latte_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The mask function of "latte" in ``AttentionMaskInterface``: the (B, kv_length) padding mask, or None.

    transformers builds masks through this function (``create_causal_mask``,
    ``create_bidirectional_mask``) with the signature of ``sdpa_mask``. Latte needs no (Tq, Tk)
    mask: causality is in the form itself, and all it must know is which positions are
    padding. It returns the 2D padding mask transformers gives it (True = real token), cut to
    the last ``kv_length`` positions, or None where there is none. Only the plain causal and
    bidirectional patterns can be told this way; any other ``mask_function`` (sliding windows,
    packed sequences, added mask functions) raises rather than be silently dropped.
    """
    if mask_function is not causal_mask_function and mask_function is not bidirectional_mask_function:
        raise ValueError(
            "mask_function: the 'latte' attention supports causal and bidirectional masks with padding only, got"
            f" {getattr(mask_function, '__name__', type(mask_function).__name__)} (a sliding window, packed sequences"
            " or an added mask function)"
        )
    if attention_mask is None:
        return None
    mask = prepare_padding_mask(attention_mask.to(torch.bool), kv_length, kv_offset)  # as sdpa_mask pads it
    assert mask is not None
    return mask[:, kv_offset : kv_offset + kv_length]


def register() -> None:
    """Add "latte" to transformers' ``AttentionInterface`` and ``AttentionMaskInterface``; idempotent.

    Afterwards ``AutoModelForCausalLM.from_config(config, attn_implementation="latte")`` and
    ``model.set_attn_implementation("latte")`` run Latte in every attention module of the model.
    """
    AttentionInterface.register(NAME, latte_attention_forward)
    AttentionMaskInterface.register(NAME, latte_mask)
