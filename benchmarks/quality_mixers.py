"""The sequence mixers that ``benchmarks/quality.py`` compares, other than Latte's own layer.

Each maps (B, T, d_model) to (B, T, d_model) causally: output t depends on inputs 0..t only.
Every weight is drawn as :class:`latte_ref.layers.torch.LatteAttention` draws its own:
normal, standard deviation ``1 / sqrt(d_model)``. ``D = d_model / n_heads`` throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DecayedLinearAttention",
    "LatteWindowHybrid",
    "LinearAttention",
    "SlotAttention",
    "SoftmaxAttention",
    "WindowAttention",
    "band_mask",
    "latent_summaries",
]


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


def band_mask(length: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool: token t sees s with t - window < s <= t (the last ``window`` tokens, itself included)."""
    t = torch.arange(length, device=device)
    gap = t[:, None] - t[None, :]
    return (gap >= 0) & (gap < window)


class WindowAttention(SoftmaxAttention):
    """Sliding-window softmax attention: :class:`SoftmaxAttention` masked to the last ``window`` tokens."""

    def __init__(self, d_model: int, n_heads: int, window: int) -> None:
        super().__init__(d_model, n_heads)
        self.window = _positive("window", window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(x @ w, self.n_heads) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(x.shape[1], self.window, x.device))
        return _merge_heads(y) @ self.wo


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


class LinearAttention(nn.Module):
    r"""Causal linear attention (Katharopoulos et al., 2020) with feature map ``elu(x) + 1`` or a Taylor map.

    .. math::

        y_t = \frac{\phi(q_t)^\top \sum_{s \le t} \phi(k_s) v_s^\top}{\phi(q_t)^\top \sum_{s \le t} \phi(k_s)}

    ``q, k`` have ``feature_size`` = F numbers per head (D if None). ``"elu"``: ``phi(x) = elu(x) + 1``
    (F features). ``"taylor"`` (Based, Arora et al. 2024): ``phi(x) = [1, x / F^(1/4), vec(x x^T) / sqrt(2 F)]``
    (1 + F + F^2 features), so that ``phi(q).phi(k) = 1 + q.k / sqrt(F) + (q.k)^2 / (2 F) > 0``.
    Computed chunk by chunk: inside a chunk the masked (C, C) products, across chunks the running
    state ``S = sum_s phi(k_s) v_s^T`` and normaliser ``z = sum_s phi(k_s)``.
    """

    def __init__(
        self, d_model: int, n_heads: int, chunk: int = 64, feature_size: int | None = None, feature_map: str = "elu"
    ) -> None:
        super().__init__()
        if feature_map not in ("elu", "taylor"):
            raise ValueError(f"feature_map must be 'elu' or 'taylor', got {feature_map!r}")
        self.n_heads, self.chunk, self.feature_map = n_heads, chunk, feature_map
        self.feature_size = _positive("feature_size", feature_size or d_model // n_heads)
        self.wq, self.wk = (_projection(d_model, n_heads * self.feature_size) for _ in range(2))
        self.wv, self.wo = (_projection(d_model, d_model) for _ in range(2))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, F) -> (B, H, T, F) for elu, (B, H, T, 1 + F + F^2) for taylor."""
        if self.feature_map == "elu":
            return F.elu(x) + 1.0
        f = self.feature_size
        square = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2.0 * f)
        return torch.cat([torch.ones_like(x[..., :1]), x / f**0.25, square], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model); token t sees tokens 0..t."""
        phi_q, phi_k = (self.features(_split_heads(x @ w, self.n_heads)) for w in (self.wq, self.wk))
        v = _split_heads(x @ self.wv, self.n_heads)  # (B, H, T, D)
        b, h, _, d = v.shape
        state = v.new_zeros(b, h, phi_k.shape[-1], d)  # sum of phi(k_s) v_s^T over the chunks before
        normaliser = v.new_zeros(b, h, 1, phi_k.shape[-1])  # sum of phi(k_s) over the chunks before
        outputs = []
        for start in range(0, x.shape[1], self.chunk):
            fq, fk, vc = (a[:, :, start : start + self.chunk] for a in (phi_q, phi_k, v))
            seen = torch.ones(fq.shape[2], fq.shape[2], dtype=torch.bool, device=x.device).tril()
            scores = (fq @ fk.transpose(-1, -2)).masked_fill(~seen, 0.0)  # (B, H, C, C)
            numerator = fq @ state + scores @ vc
            denominator = (fq * normaliser).sum(-1, keepdim=True) + scores.sum(-1, keepdim=True)
            outputs.append(numerator / denominator)
            state = state + fk.transpose(-1, -2) @ vc
            normaliser = normaliser + fk.sum(2, keepdim=True)
        return _merge_heads(torch.cat(outputs, dim=2)) @ self.wo


class DecayedLinearAttention(nn.Module):
    r"""RetNet's retention (Sun et al. 2023): linear attention with a fixed decay per head, no feature map.

    ``y_t = norm(sum_{s <= t} gamma_h^(t - s) (q_t . k_s / sqrt(D)) v_s)`` with ``gamma_h = 1 - 2^(-5 - h)``
    and ``norm`` a LayerNorm over each head's D outputs without parameters (RetNet's GroupNorm). Its
    state is ``S_t = gamma S_{t-1} + k_t v_t^T``, D x D per head; computed here in the (T, T) form.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv, self.wo = (_projection(d_model, d_model) for _ in range(4))
        self.register_buffer("log_gamma", torch.log(1 - 2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float32))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(x @ w, self.n_heads) for w in (self.wq, self.wk, self.wv))
        t = torch.arange(x.shape[1], device=x.device)
        gap = (t[:, None] - t[None, :]).to(x.dtype)
        decay = torch.exp(gap.clamp_min(0) * self.log_gamma[:, None, None]) * (gap >= 0)  # (H, T, T)
        y = ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) * decay) @ v
        return _merge_heads(F.layer_norm(y, y.shape[-1:])) @ self.wo


def latent_summaries(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    r"""``out[..., t, l, :] = sum_{s <= t} p(s | l, t) values[..., s, :]``, ``p(s | l, t) = softmax_s scores[s, l]``.

    scores: (B, H, T, L), values: (B, H, T, E) -> (B, H, T, L, E). Latte's write: one running
    softmax-weighted average per latent. Prefix sums in float64 after subtracting each latent's
    maximum over T (the ratio does not depend on it; float64 keeps the early prefixes from underflowing).
    """
    weights = torch.exp((scores - scores.amax(dim=2, keepdim=True).detach()).double())  # (B, H, T, L)
    numerator = torch.cumsum(weights[..., None] * values.double()[..., None, :], dim=2)
    return (numerator / torch.cumsum(weights, dim=2)[..., None]).to(values.dtype)


class LatteWindowHybrid(nn.Module):
    r"""Sliding-window softmax over the last w tokens plus Latte over the tokens before them.

    .. math::

        y_t = \sigma(\gamma_h)\, \mathrm{softmax}_{t-w < s \le t}\!\big(q_t \cdot k_s / \sqrt{D}\big) v_s
              + (1 - \sigma(\gamma_h)) \sum_l p(l \mid t) \sum_{s \le t - w} p(s \mid l, t - w)\, v_s

    with Latte's ``p(l | t) = softmax_l(x_t W_q)``, ``p(s | l, t - w) = softmax_{s <= t - w}(x_s W_k)_l``
    (the second term is 0 while ``t < w``) and one learned mixing logit ``gamma_h`` per head
    (initially 0: equal weights). Local and latent parts share ``W_v``; ``W_q, W_k`` of the local
    part are D per head, Latte's are L / H per head.
    """

    def __init__(self, d_model: int, n_heads: int, n_latents: int, window: int) -> None:
        super().__init__()
        self.n_heads, self.window = n_heads, _positive("window", window)
        self.local = WindowAttention(d_model, n_heads, window)
        self.wq_latent, self.wk_latent = (_projection(d_model, n_latents) for _ in range(2))
        self.mix = nn.Parameter(torch.zeros(n_heads, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local
        q, k, v = (_split_heads(x @ w, self.n_heads) for w in (local.wq, local.wk, local.wv))
        near = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(x.shape[1], self.window, x.device))
        p_latent = torch.softmax(_split_heads(x @ self.wq_latent, self.n_heads), dim=-1)  # (B, H, T, L/H)
        summaries = latent_summaries(_split_heads(x @ self.wk_latent, self.n_heads), v)  # (B, H, T, L/H, D)
        older = F.pad(summaries[:, :, : max(0, x.shape[1] - self.window)], (0, 0, 0, 0, self.window, 0))
        far = (p_latent[..., None] * older[:, :, : x.shape[1]]).sum(-2)
        gate = torch.sigmoid(self.mix)
        return _merge_heads(gate * near + (1 - gate) * far) @ local.wo


class SlotAttention(nn.Module):
    r"""ABC (Peng et al. 2022): Latte's write into m slots per head, then a content-based softmax read.

    .. math::

        \tilde K_{t,l} = \sum_{s \le t} p(s \mid l, t)\, k_s,\quad
        \tilde V_{t,l} = \sum_{s \le t} p(s \mid l, t)\, v_s,\quad
        y_t = \sum_l \mathrm{softmax}_l\!\big(q_t \cdot \tilde K_{t,l} / \sqrt{D}\big)\, \tilde V_{t,l}

    with ``p(s | l, t) = softmax_{s <= t}(x_s W_phi)_l`` as in Latte. Where Latte weighs its
    latents by ``softmax_l(x_t W_q)``, fixed directions, ABC compares the query with what each
    slot holds: the difference isolates the cost of Latte's fixed-latent read.
    """

    def __init__(self, d_model: int, n_heads: int, n_slots: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv, self.wo = (_projection(d_model, d_model) for _ in range(4))
        self.w_phi = _projection(d_model, _positive("n_slots", n_slots))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(x @ w, self.n_heads) for w in (self.wq, self.wk, self.wv))
        d = q.shape[-1]
        slots = latent_summaries(_split_heads(x @ self.w_phi, self.n_heads), torch.cat([k, v], -1))
        keys, values = slots[..., :d], slots[..., d:]  # (B, H, T, m, D) each
        read = torch.softmax((q[..., None, :] * keys).sum(-1) / math.sqrt(d), dim=-1)  # (B, H, T, m)
        return _merge_heads((read[..., None] * values).sum(-2)) @ self.wo
