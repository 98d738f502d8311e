"""Latte inside x-transformers: ``LatteAttend`` takes the place of the ``Attend`` module of its ``Attention``.

x-transformers' ``Attention`` projects the tokens to q, k, v (batch, heads, T, dim_head),
applies what it applies to them (rotary embeddings, norms, K/V heads fewer than query heads),
and hands them to ``self.attend``, which computes softmax attention; the output projection
follows. :func:`use_latte` swaps every ``attend`` of a model for :class:`LatteAttend`, which
reads the same q and k as Latte's latent logits (L = dim_head latents per head) and returns
:func:`latte_ref.causal` or :func:`latte_ref.bidirectional` of them, in the head-first
layout (``layout="BHTD"``), grouped K/V heads as they come.

Imports PyTorch and x-transformers (this module only).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F
from x_transformers.attend import Attend, Intermediates

from ..bidirectional import bidirectional
from ..causal import causal as causal_form

__all__ = ["LatteAttend", "use_latte"]


class LatteAttend(nn.Module):
    """Latte with the call of x-transformers' ``Attend``: ``(q, k, v, mask=..., causal=...) -> (out, intermediates)``.

    q (B, H, T, L), k (B, H_kv, S, L), v (B, H_kv, S, D) -> out (B, H, T, D), with H_kv a
    divisor of H. ``mask`` may be None or a key-padding mask (B, 1, 1, S) (True: a real
    key), the only mask x-transformers builds that Latte can honour; attention biases
    (relative positions, ALiBi), residual attention and any other mask are a ``ValueError``.
    As ``Attend``, a single query in causal mode (cached decoding) reads every key given.

    Parameters
    ----------
    causal : bool
        The default when the call gives no ``causal``.
    dropout : float
        Dropout on the heads' outputs in training (Latte forms no attention weights to drop).
    """

    def __init__(self, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.causal, self.dropout = bool(causal), float(dropout)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        prev_attn: torch.Tensor | None = None,
        attn_delta: torch.Tensor | None = None,
        row_mask: torch.Tensor | None = None,
        flash_pack_seq_kwargs: Any = None,
        causal: bool | None = None,
    ) -> tuple[torch.Tensor, Intermediates]:
        """Latte of q over k, v (head-first): the output (B, H, T, D) and empty ``Intermediates``."""
        for name, given in (("attn_bias", attn_bias), ("prev_attn", prev_attn), ("attn_delta", attn_delta)):
            if given is not None:
                raise ValueError(
                    f"{name}: Latte forms no attention logits to add to (turn off relative position biases, ALiBi"
                    " and residual attention)"
                )
        if flash_pack_seq_kwargs is not None:
            raise ValueError("flash_pack_seq_kwargs: packed sequences reach Latte as segment_ids, not through Attend")
        causal = self.causal if causal is None else causal
        if q.shape[-2] == 1 and causal:  # cached decoding: the one new query reads every cached key
            causal = False
        if k.dim() == 3:  # one K/V head, given without its head axis
            k, v = k.unsqueeze(1), v.unsqueeze(1)
        keep = _kept_keys(mask, k.shape[0], k.shape[-2])
        if causal:
            y = cast(torch.Tensor, causal_form(q, k, v, mask=keep, layout="BHTD"))
        else:
            y = bidirectional(q, k, v, key_mask=keep, layout="BHTD")
        return F.dropout(y, self.dropout, training=self.training), Intermediates()

    def extra_repr(self) -> str:
        return f"causal={self.causal}, dropout={self.dropout}"


def _kept_keys(mask: torch.Tensor | None, batch: int, n_keys: int) -> torch.Tensor | None:
    """x-transformers' combined mask (True: may attend) as a key mask (B, S); a ``ValueError`` for anything else."""
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[-1] != n_keys:
        raise ValueError(
            "mask: Latte honours a key-padding mask (B, 1, 1, S) only, not an attention pattern; got"
            f" {mask.dtype} of shape {tuple(mask.shape)}"
        )
    return mask[:, 0, 0, :].expand(batch, n_keys)


def use_latte(model: nn.Module) -> nn.Module:
    """Replace the ``attend`` of every x-transformers ``Attention`` in ``model`` by :class:`LatteAttend`, in place.

    Each keeps its ``Attend``'s causal flag and dropout. Returns ``model``.

    Examples
    --------
    >>> import torch
    >>> from x_transformers import Decoder, TransformerWrapper
    >>> from latte_ref.integrations.x_transformers import use_latte
    >>> model = TransformerWrapper(num_tokens=50, max_seq_len=32, attn_layers=Decoder(dim=32, depth=1, heads=4))
    >>> model = use_latte(model)
    >>> model(torch.randint(0, 50, (2, 16))).shape
    torch.Size([2, 16, 50])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = [m for m in model.modules() if isinstance(getattr(m, "attend", None), Attend)]
    if not found:
        raise ValueError("model has no x-transformers Attention (no module with an Attend as its attend)")
    for module in found:
        attend = cast(Attend, module.attend)
        dropout = attend.attn_dropout.p if isinstance(attend.attn_dropout, nn.Dropout) else 0.0
        module.attend = LatteAttend(causal=bool(attend.causal), dropout=dropout)
    return model
