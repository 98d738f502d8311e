"""The three attentions that ``benchmarks/quality.py`` compares, and the Transformer they sit in.

The models are identical except for the attention module: the same token embedding,
the same sinusoidal positions (no parameters, the same for every attention), the same
pre-norm blocks (attention, then a two-layer MLP) and the same tied-free LM head.
Every attention weight is drawn as :class:`latte_ref.layers.torch.LatteAttention`
draws its own: normal, standard deviation ``1 / sqrt(d_model)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latte_ref.layers.torch import LatteAttention

__all__ = ["ATTENTIONS", "LinearAttention", "SoftmaxAttention", "TinyTransformer", "count_parameters"]

ATTENTIONS = ("softmax", "latte", "linear")


def _projection(d_model: int, d_out: int) -> nn.Parameter:
    """A (d_model, d_out) weight, normal with standard deviation 1 / sqrt(d_model), as Latte's layer."""
    return nn.Parameter(torch.randn(d_model, d_out) / math.sqrt(d_model))


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    b, t, width = x.shape
    return x.reshape(b, t, n_heads, width // n_heads).transpose(1, 2)


def _merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D)."""
    b, h, t, d = y.shape
    return y.transpose(1, 2).reshape(b, t, h * d)


class SoftmaxAttention(nn.Module):
    """Standard causal multi-head attention: ``softmax(q k^T / sqrt(D))`` with ``scaled_dot_product_attention``.

    Parameters
    ----------
    d_model : int
    n_heads : int
        d_model / n_heads = D per head. Weights wq, wk, wv, wo: (d_model, d_model) each.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv, self.wo = (_projection(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model); token t sees tokens 0..t."""
        q, k, v = (_split_heads(x @ w, self.n_heads) for w in (self.wq, self.wk, self.wv))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return _merge_heads(y) @ self.wo


class LinearAttention(nn.Module):
    r"""Plain causal linear attention (Katharopoulos et al., 2020) with the feature map ``elu(x) + 1``.

    .. math::

        y_t = \frac{\phi(q_t)^\top \sum_{s \le t} \phi(k_s) v_s^\top}{\phi(q_t)^\top \sum_{s \le t} \phi(k_s)}

    computed chunk by chunk: inside a chunk the masked (C, C) products, across chunks the
    running state :math:`S = \sum_s \phi(k_s) v_s^\top` (D x D per head) and normaliser
    :math:`z = \sum_s \phi(k_s)` (D per head). Weights as :class:`SoftmaxAttention`.

    Parameters
    ----------
    d_model : int
    n_heads : int
    chunk : int
        Tokens per chunk (the last one may be shorter).
    """

    def __init__(self, d_model: int, n_heads: int, chunk: int = 64) -> None:
        super().__init__()
        self.n_heads, self.chunk = n_heads, chunk
        self.wq, self.wk, self.wv, self.wo = (_projection(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model); token t sees tokens 0..t."""
        q, k, v = (_split_heads(x @ w, self.n_heads) for w in (self.wq, self.wk, self.wv))  # (B, H, T, D)
        phi_q, phi_k = F.elu(q) + 1.0, F.elu(k) + 1.0
        b, h, _, d = v.shape
        state = v.new_zeros(b, h, d, d)  # sum of phi(k_s) v_s^T over the chunks before
        normaliser = v.new_zeros(b, h, 1, d)  # sum of phi(k_s) over the chunks before
        outputs = []
        for start in range(0, x.shape[1], self.chunk):
            fq, fk, vc = (a[:, :, start : start + self.chunk] for a in (phi_q, phi_k, v))  # (B, H, C, D)
            seen = torch.ones(fq.shape[2], fq.shape[2], dtype=torch.bool, device=x.device).tril()
            scores = (fq @ fk.transpose(-1, -2)).masked_fill(~seen, 0.0)  # (B, H, C, C)
            numerator = fq @ state + scores @ vc  # (B, H, C, D)
            denominator = (fq * normaliser).sum(-1, keepdim=True) + scores.sum(-1, keepdim=True)  # (B, H, C, 1)
            outputs.append(numerator / denominator)
            state = state + fk.transpose(-1, -2) @ vc
            normaliser = normaliser + fk.sum(2, keepdim=True)
        return _merge_heads(torch.cat(outputs, dim=2)) @ self.wo


def make_attention(kind: str, d_model: int, n_heads: int, n_latents: int) -> nn.Module:
    """The attention module named ``kind`` (one of :data:`ATTENTIONS`); ``n_latents`` is Latte's only."""
    if kind == "softmax":
        return SoftmaxAttention(d_model, n_heads)
    if kind == "linear":
        return LinearAttention(d_model, n_heads)
    if kind == "latte":
        return LatteAttention(d_model, n_latents, n_heads, causal=True)
    raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """The fixed positions of Vaswani et al.: (length, d_model), sin on even and cos on odd features."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class Block(nn.Module):
    """Pre-norm block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))`` with a 4x GELU MLP."""

    def __init__(self, attention: nn.Module, d_model: int) -> None:
        super().__init__()
        self.norm_attention, self.norm_mlp = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = attention
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.mlp(self.norm_mlp(x))


class TinyTransformer(nn.Module):
    """A causal language model whose blocks differ between models only in their attention.

    Parameters
    ----------
    attention : {"softmax", "latte", "linear"}
    vocab_size, d_model, n_layers, n_heads : int
    n_latents : int
        Latte's latents over all heads (unused by the other attentions).
    """

    def __init__(
        self, attention: str, vocab_size: int, d_model: int, n_layers: int, n_heads: int, n_latents: int
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(make_attention(attention, d_model, n_heads, n_latents), d_model) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) int64 -> logits (B, T, vocab_size); position t sees tokens 0..t."""
        positions = sinusoidal_positions(tokens.shape[1], self.d_model).to(self.embedding.weight.device)
        x = self.embedding(tokens) + positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
