"""The models that ``benchmarks/quality.py`` compares: one small Transformer, one attention (mixer) each.

The models are identical except for the attention module: the same token embedding, the
same sinusoidal positions (no parameters, the same for every attention), the same pre-norm
blocks (optionally a short causal convolution, then the attention, then a two-layer MLP) and
the same LM head. The attentions other than Latte's are in ``benchmarks/quality_mixers.py``.
Every attention weight is drawn as :class:`latte_ref.layers.torch.LatteAttention` draws its
own: normal, standard deviation ``1 / sqrt(d_model)``.
"""

from __future__ import annotations

import math

import torch
from quality_mixers import (
    DecayedLinearAttention,
    LatteWindowHybrid,
    LinearAttention,
    SlotAttention,
    SoftmaxAttention,
    WindowAttention,
)
from torch import nn

from latte_ref.layers.torch import LatteAttention

__all__ = [
    "ATTENTIONS",
    "DEFAULT_SIZES",
    "LinearAttention",
    "SoftmaxAttention",
    "TinyTransformer",
    "count_parameters",
    "make_attention",
    "state_per_layer",
]

ATTENTIONS = ("softmax", "latte", "linear", "taylor", "window", "hybrid", "retnet", "abc")
# What ``size`` means per attention: Latte's latents L over all heads; the feature size F per head
# of linear (elu + 1) and taylor; the window w of window and of hybrid (whose latents are n_latents);
# ABC's slots over all heads. None: no size (softmax, retnet) or the default (latte: n_latents, linear: D).
DEFAULT_SIZES: dict[str, int | None] = {
    "softmax": None,
    "latte": None,
    "linear": None,
    "taylor": 8,
    "window": 32,
    "hybrid": 16,
    "retnet": None,
    "abc": 64,
}


def make_attention(kind: str, d_model: int, n_heads: int, n_latents: int, size: int | None = None) -> nn.Module:
    """The attention named ``kind`` (one of :data:`ATTENTIONS`) at ``size`` (see :data:`DEFAULT_SIZES`)."""
    if kind not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
    size = DEFAULT_SIZES[kind] if size is None else size
    if kind == "softmax":
        return SoftmaxAttention(d_model, n_heads)
    if kind == "latte":
        return LatteAttention(d_model, size or n_latents, n_heads, causal=True)
    if kind in ("linear", "taylor"):
        return LinearAttention(d_model, n_heads, feature_size=size, feature_map="elu" if kind == "linear" else "taylor")
    if kind == "retnet":
        return DecayedLinearAttention(d_model, n_heads)
    if kind == "abc":
        return SlotAttention(d_model, n_heads, size or n_latents)
    assert size is not None
    return (
        WindowAttention(d_model, n_heads, size)
        if kind == "window"
        else LatteWindowHybrid(d_model, n_heads, n_latents, size)
    )


def state_per_layer(
    kind: str, d_model: int, n_heads: int, n_latents: int, size: int | None, length: int, conv: bool = False
) -> int:
    """Numbers a decoder carries per layer after ``length`` tokens, d = d_model, H heads, D = d / H.

    softmax ``2 T d`` (every key and value); window ``2 min(w, T) d``; latte ``L (D + 1)``
    (a running average of D values and its normaliser per latent); linear ``H F (D + 1)``
    (``S`` and ``z``); taylor ``H (1 + F + F^2)(D + 1)``; retnet ``H D^2``; abc ``m (2 D + 1)``
    (keys, values, normaliser per slot); hybrid ``2 min(w, T) d + L (D + 1)``; plus ``2 d`` with
    the convolution (its last two inputs).
    """
    size = DEFAULT_SIZES[kind] if size is None else size
    d, h = d_model, n_heads
    head = d // h
    window = min(size or length, length)
    states = {
        "softmax": lambda: 2 * length * d,
        "window": lambda: 2 * window * d,
        "latte": lambda: (size or n_latents) * (head + 1),
        "linear": lambda: h * (size or head) * (head + 1),
        "taylor": lambda: h * (1 + (size or head) + (size or head) ** 2) * (head + 1),
        "retnet": lambda: h * head * head,
        "abc": lambda: (size or n_latents) * (2 * head + 1),
        "hybrid": lambda: 2 * window * d + n_latents * (head + 1),
    }
    if kind not in states:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
    return states[kind]() + (2 * d if conv else 0)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """The fixed positions of Vaswani et al.: (length, d_model), sin on even and cos on odd features."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class ShortConvolution(nn.Module):
    """Depthwise causal convolution over time, kernel 3: ``y_t = sum_{j<3} w_j * x_{t-j} + b`` per channel."""

    def __init__(self, d_model: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


class Block(nn.Module):
    """Pre-norm block: ``x + attention(conv(norm(x)))`` (conv optional), then ``x + mlp(norm(x))``, 4x GELU MLP."""

    def __init__(self, attention: nn.Module, d_model: int, conv: bool = False) -> None:
        super().__init__()
        self.norm_attention, self.norm_mlp = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.conv = ShortConvolution(d_model) if conv else nn.Identity()
        self.attention = attention
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.conv(self.norm_attention(x)))
        return x + self.mlp(self.norm_mlp(x))


class TinyTransformer(nn.Module):
    """A causal language model whose blocks differ between models only in their attention.

    Parameters
    ----------
    attention : one of :data:`ATTENTIONS`
    vocab_size, d_model, n_layers, n_heads : int
    n_latents : int
        Latte's latents over all heads (and the hybrid's); unused by the others.
    size : int, optional
        The attention's size (see :data:`DEFAULT_SIZES`).
    conv : bool
        A short causal convolution (kernel 3) in front of every attention.
    """

    def __init__(
        self,
        attention: str,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        n_latents: int,
        size: int | None = None,
        conv: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(make_attention(attention, d_model, n_heads, n_latents, size), d_model, conv) for _ in range(n_layers)
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
