"""``LatteMultiheadAttention``: Latte behind the constructor and ``forward`` of ``torch.nn.MultiheadAttention``.

Imports PyTorch; re-exported by :mod:`latte_ref.layers.torch`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from .._params import register_jax_pytree
from ..bidirectional import bidirectional
from ..causal import causal as causal_form
from ..definition import attention_matrix

__all__ = ["LatteMultiheadAttention"]


class LatteMultiheadAttention(nn.Module):
    r"""Latte with the interface of ``torch.nn.MultiheadAttention``: a drop-in for its ``self_attn``.

    Per head h, the queries' and keys' latent logits and the values are projections of
    ``query``, ``key`` and ``value``,

    .. math::

        q = \text{query}\, W_q^\top + b_q, \quad k = \text{key}\, W_k^\top + b_k, \quad
        v = \text{value}\, W_v^\top + b_v, \quad
        y_t = \sum_l p(l \mid t) \sum_s p(s \mid l, t)\, v_s, \quad \text{out} = y\, W_o^\top + b_o,

    with :func:`latte_ref.bidirectional` (keys of the whole sequence, or of another one:
    cross-attention) or :func:`latte_ref.causal` (``is_causal=True`` or a causal ``attn_mask``).
    W_q and W_k are (n_latents, embed_dim) and (n_latents, kdim), W_v (embed_dim, vdim),
    nn.Linear's orientation, in ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``; the
    biases in ``in_proj_bias`` (b_q, b_k, b_v one after the other), W_o and b_o in ``out_proj``.

    What differs from ``nn.MultiheadAttention``, because Latte forms no T x S matrix:

    - ``attn_mask`` can only be causal (bool: True above the diagonal; float: ``-inf`` above it
      and 0 elsewhere) or allow everything; any other pattern is a ``ValueError``;
    - ``dropout`` drops entries of the heads' outputs y (before ``out_proj``) in training, not
      attention weights;
    - ``need_weights`` defaults to False; True returns the matrix Latte implies
      (:func:`latte_ref.attention_matrix`), O(T·S) memory;
    - with a causal mask, a padded query (``key_padding_mask`` True) gets output 0 before
      ``out_proj``; in every mode, a padded key is read by no query;
    - ``add_bias_kv`` and ``add_zero_attn`` are not supported (``NotImplementedError``).

    Inside ``nn.TransformerEncoderLayer``, whose eval-mode fast path would call torch's fused
    softmax kernel with these weights: the weights are never packed (``in_proj_weight`` is
    None and ``_qkv_same_embed_dim`` False, as for ``nn.MultiheadAttention`` with
    ``kdim != embed_dim``), so that path is never taken and this ``forward`` always runs.

    Parameters
    ----------
    embed_dim, num_heads : int
        Model width E and heads H; E and ``n_latents`` are multiples of H.
    n_latents : int, optional
        Latents of all heads together (L = n_latents / H per head); ``embed_dim`` when omitted.
    dropout : float
        Dropout on the heads' outputs in training.
    bias : bool
        Biases of the input projections and of ``out_proj``.
    add_bias_kv, add_zero_attn : bool
        Must be False.
    kdim, vdim : int, optional
        Widths of ``key`` and ``value``; ``embed_dim`` when omitted.
    batch_first : bool
        (N, T, E) when True, (T, N, E) when False, as ``nn.MultiheadAttention``.
    device, dtype : optional
        Of the parameters.

    Examples
    --------
    >>> import torch
    >>> from latte_ref.layers.torch import LatteMultiheadAttention
    >>> _ = torch.manual_seed(0)
    >>> attention = LatteMultiheadAttention(32, 4, batch_first=True)
    >>> x = torch.randn(2, 10, 32)
    >>> out, weights = attention(x, x, x, is_causal=True)
    >>> out.shape, weights
    (torch.Size([2, 10, 32]), None)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        n_latents: int | None = None,
    ) -> None:
        super().__init__()
        register_jax_pytree()  # as LatteAttention: never inside a compiled forward
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError(
                "add_bias_kv and add_zero_attn have no Latte counterpart: LatteMultiheadAttention needs both False"
            )
        n_latents = embed_dim if n_latents is None else n_latents
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        for name, value in (
            ("embed_dim", embed_dim),
            ("num_heads", num_heads),
            ("n_latents", n_latents),
            ("kdim", kdim),
            ("vdim", vdim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("embed_dim", embed_dim), ("n_latents", n_latents)):
            if value % num_heads:
                raise ValueError(f"{name} must be a multiple of num_heads={num_heads}, got {value}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads, self.n_latents = embed_dim, num_heads, n_latents
        self.kdim, self.vdim, self.head_dim = kdim, vdim, embed_dim // num_heads
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        # Never packed: torch's transformer layers take their fused softmax path only for packed weights.
        self._qkv_same_embed_dim = False
        factory = {"device": device, "dtype": dtype}
        self.q_proj_weight = nn.Parameter(torch.empty(n_latents, embed_dim, **factory))
        self.k_proj_weight = nn.Parameter(torch.empty(n_latents, kdim, **factory))
        self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, vdim, **factory))
        self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(2 * n_latents + embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """As ``nn.MultiheadAttention``: Xavier-uniform projections, zero biases."""
        for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention, *, n_latents: int | None = None) -> LatteMultiheadAttention:
        """The Latte layer with ``mha``'s projections (packed or separate) and biases, copied.

        The query and key projections of ``mha`` become the latent logits' (so ``n_latents``
        is ``embed_dim``); the value and output projections keep their role.

        Examples
        --------
        >>> from torch import nn
        >>> from latte_ref.layers.torch import LatteMultiheadAttention
        >>> layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
        >>> layer.self_attn = LatteMultiheadAttention.from_module(layer.self_attn)
        >>> type(layer.self_attn).__name__, layer.self_attn.n_latents, layer.self_attn.batch_first
        ('LatteMultiheadAttention', 32, True)
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if n_latents is not None and n_latents != mha.embed_dim:
            raise ValueError(f"n_latents must be mha.embed_dim={mha.embed_dim} (its query projection's width)")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise NotImplementedError("mha has add_bias_kv or add_zero_attn, which Latte does not support")
        if mha._qkv_same_embed_dim:
            w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        layer = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=w_q.device,
            dtype=w_q.dtype,
        )
        with torch.no_grad():
            for mine, theirs in ((layer.q_proj_weight, w_q), (layer.k_proj_weight, w_k), (layer.v_proj_weight, w_v)):
                mine.copy_(theirs)
            layer.out_proj.weight.copy_(mha.out_proj.weight)
            if layer.in_proj_bias is not None:
                layer.in_proj_bias.copy_(mha.in_proj_bias)
                layer.out_proj.bias.copy_(mha.out_proj.bias)
        return layer

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latte of ``query`` over ``key`` and ``value``: ``(output, weights)``, ``weights`` None unless asked for.

        Parameters
        ----------
        query : tensor, shape (N, T, E) if batch_first else (T, N, E); or (T, E) unbatched
        key, value : tensors, shape (N, S, kdim) and (N, S, vdim) (or as ``query``'s layout)
            S = T for causal attention.
        key_padding_mask : tensor, shape (N, S) or (S,), optional
            bool True, or float ``-inf``, for a padding key (0: a real one), as ``nn.MultiheadAttention``.
        need_weights : bool
            Also return the attention matrix Latte implies, (N, T, S) averaged over heads, or
            (N, H, T, S) with ``average_attn_weights=False``.
        attn_mask : tensor, shape (T, S) or (N·H, T, S), optional
            Causal (bool True / float ``-inf`` above the diagonal) or allowing every key.
        is_causal : bool
            Causal attention (``attn_mask`` may then be omitted).

        Returns
        -------
        output : tensor, the layout of ``query`` with width E
        weights : tensor or None
        """
        if query.is_nested:
            return self._forward_nested(query, key, value, need_weights=need_weights, is_causal=is_causal)
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "query, key and value must all be 3-d (batched) or 2-d (unbatched), got"
                f" {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        if not batched:
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        n, t, s = query.shape[0], query.shape[1], key.shape[1]
        if key.shape[0] != n or value.shape[:2] != key.shape[:2]:
            raise ValueError(
                f"key and value must have query's batch and one length S, got {tuple(key.shape)}, {tuple(value.shape)}"
            )
        causal = _causal_from(attn_mask, is_causal, t, s)
        keep = _kept_keys(key_padding_mask, n, s)  # [N, S], True for a real key
        b_q, b_k, b_v = (
            (None, None, None)
            if self.in_proj_bias is None
            else self.in_proj_bias.split([self.n_latents, self.n_latents, self.embed_dim])
        )
        h = self.num_heads
        q = F.linear(query, self.q_proj_weight, b_q).unflatten(-1, (h, -1))  # [N, T, H, L]
        k = F.linear(key, self.k_proj_weight, b_k).unflatten(-1, (h, -1))  # [N, S, H, L]
        v = F.linear(value, self.v_proj_weight, b_v).unflatten(-1, (h, -1))  # [N, S, H, D]
        if causal:
            y = cast(torch.Tensor, causal_form(q, k, v, mask=keep))
        else:
            y = bidirectional(q, k, v, key_mask=keep)
        y = F.dropout(y, self.dropout, training=self.training)
        out = self.out_proj(y.flatten(-2).to(query.dtype))
        out = out if self.batch_first or not batched else out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attention_matrix(q, k, causal=causal, key_mask=keep)  # [N, H, T, S]
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        return (out if batched else out.squeeze(0)), weights

    def _forward_nested(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, need_weights: bool, is_causal: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention over a nested tensor (``nn.TransformerEncoder``'s eval-mode padding path), row by row."""
        if not (query is key and key is value) or need_weights:
            raise ValueError("a nested-tensor query is supported for self-attention (query is key is value) only")
        outputs = []
        for row in query.unbind():  # (T_i, E): each row unbatched, its padding already taken out
            outputs.append(self.forward(row, row, row, is_causal=is_causal)[0])
        return torch.nested.as_nested_tensor(outputs), None

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, n_latents={self.n_latents},"
            f" batch_first={self.batch_first}, kdim={self.kdim}, vdim={self.vdim}, dropout={self.dropout},"
            f" bias={self.in_proj_bias is not None}"
        )


def _causal_from(attn_mask: torch.Tensor | None, is_causal: bool, t: int, s: int) -> bool:
    """Whether ``attn_mask`` / ``is_causal`` ask for causal attention; a ``ValueError`` for a mask Latte cannot honour.

    Allowed: None, a mask that allows every key (bool all False, float all 0), or the causal one
    (bool True strictly above the diagonal; float ``-inf`` there and 0 elsewhere), as (T, S) or
    stacked (N·H, T, S).
    """
    if attn_mask is None:
        causal = bool(is_causal)
    else:
        if attn_mask.dim() not in (2, 3) or tuple(attn_mask.shape[-2:]) != (t, s):
            raise ValueError(
                f"attn_mask must have shape ({t}, {s}) or (N*num_heads, {t}, {s}), got {tuple(attn_mask.shape)}"
            )
        blocked = attn_mask if attn_mask.dtype == torch.bool else attn_mask == float("-inf")
        if attn_mask.dtype != torch.bool and not bool(((attn_mask == 0) | blocked).all()):
            raise ValueError("attn_mask: a float mask must hold only 0 and -inf (Latte cannot add arbitrary scores)")
        above = torch.ones(t, s, dtype=torch.bool, device=attn_mask.device).triu(1)
        if not bool(blocked.any()):
            causal = bool(is_causal)
        elif t == s and bool((blocked == above).all()):
            causal = True
        else:
            raise ValueError(
                "attn_mask must be causal (blocking exactly the keys after each query) or block nothing:"
                " Latte cannot honour any other pattern"
            )
    if causal and t != s:
        raise ValueError(f"causal attention needs as many keys as queries, got {t} queries and {s} keys")
    return causal


def _kept_keys(key_padding_mask: torch.Tensor | None, n: int, s: int) -> torch.Tensor | None:
    """torch's key_padding_mask (True or -inf: padding) as Latte's mask (True: a real token), shape (N, S)."""
    if key_padding_mask is None:
        return None
    if tuple(key_padding_mask.shape) != (n, s):
        raise ValueError(f"key_padding_mask must have shape ({n}, {s}), got {tuple(key_padding_mask.shape)}")
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask
    padding = key_padding_mask == float("-inf")
    if not bool(((key_padding_mask == 0) | padding).all()):
        raise ValueError("key_padding_mask: a float mask must hold only 0 (a real key) and -inf (padding)")
    return ~padding
