"""The worked example: Latte on six tokens, every probability printed, and optionally drawn.

Library code behind ``latte-ref explain`` (:mod:`latte_ref.commands.explain` only parses
the arguments).

The same tokens go through three attentions that share the query and key
vectors ``q_t, k_s`` (L numbers each):

* bidirectional Latte, ``p(s | t) = sum_l p(l | t) p(s | l)``;
* causal Latte, ``p(s | t) = sum_l p(l | t) p(s | l, t)`` with ``s <= t``;
* standard softmax attention, ``p(s | t) = softmax_s(q_t . k_s / sqrt(L))``.

Latte reads each of the L coordinates as the logit of a latent; standard
attention reads the vectors through their dot product. The pictures show what
each makes of the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import numpy as np_xp

from ._array import softmax
from .bidirectional import bidirectional
from .causal import causal as causal_form
from .definition import attention_matrix

__all__ = [
    "DEFAULT_PLOT",
    "MASKED_COLOUR",
    "TOKENS",
    "WorkedExample",
    "format_example",
    "heatmap_cells",
    "p_key_given_latent",
    "p_latent_given_query",
    "plot_example",
    "softmax_attention",
    "worked_example",
]

TOKENS = ("the", "cat", "sat", "on", "the", "mat")
"""Labels of the example's tokens (their embeddings are random)."""

LOGIT_SCALE = 2.0
"""Standard deviation of the example's random query and key logits."""


@dataclass(frozen=True)
class WorkedExample:
    """Every quantity of the worked example, one head, as float64 NumPy arrays.

    Attributes
    ----------
    tokens : tuple of str, length T
    q, k : array, shape (T, L)
        Latent logits of queries and keys.
    v : array, shape (T, D)
    p_latent : array, shape (T, L)
        ``p(l | t)``.
    p_key_bidirectional : array, shape (L, T)
        ``p(s | l)``; the same for every query t.
    p_key_causal : array, shape (L, T, T)
        ``p(s | l, t)``, indexed ``[l, t, s]``; 0 for ``s > t``.
    attention_bidirectional, attention_causal, attention_softmax : array, shape (T, T)
        ``p(s | t)`` of bidirectional Latte, causal Latte and standard softmax attention.
    y_bidirectional, y_causal : array, shape (T, D)
        The outputs of :func:`latte_ref.bidirectional` and :func:`latte_ref.causal`.
    """

    tokens: tuple[str, ...]
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    p_latent: np.ndarray
    p_key_bidirectional: np.ndarray
    p_key_causal: np.ndarray
    attention_bidirectional: np.ndarray
    attention_causal: np.ndarray
    attention_softmax: np.ndarray
    y_bidirectional: np.ndarray
    y_causal: np.ndarray


def p_latent_given_query(q: np.ndarray) -> np.ndarray:
    r""":math:`p(l \mid t) = \operatorname{softmax}_l q_{t,l}`; q: (T, L) -> (T, L)."""
    return np.asarray(softmax(np_xp, q, axis=-1))


def p_key_given_latent(k: np.ndarray, *, causal: bool) -> np.ndarray:
    r""":math:`p(s \mid l, t) = \exp k_{s,l} / \sum_{s' \in S(t)} \exp k_{s',l}`; k: (T, L) -> (L, T(t), T(s)).

    Bidirectional: S(t) is every token, so all rows t are equal to ``p(s | l)``.
    Causal: S(t) = {s <= t}, and the entries with s > t are 0.
    """
    n = k.shape[0]
    keys = np.broadcast_to(k.T[:, None, :], (k.shape[1], n, n))  # [L, T(t), T(s)]
    if causal:
        keys = np.where(np.tril(np.ones((n, n), dtype=bool)), keys, -np.inf)
    return np.asarray(softmax(np_xp, keys, axis=-1))


def softmax_attention(q: np.ndarray, k: np.ndarray, *, causal: bool) -> np.ndarray:
    r"""Standard attention on the same vectors, :math:`\operatorname{softmax}_s(q_t \cdot k_s / \sqrt{L})`.

    q, k: (T, L) -> (T(t), T(s)); with ``causal`` the keys s > t get probability 0.
    """
    scores = q @ k.T / math.sqrt(q.shape[-1])  # [T(t), T(s)]
    if causal:
        scores = np.where(np.tril(np.ones(scores.shape, dtype=bool)), scores, -np.inf)
    return np.asarray(softmax(np_xp, scores, axis=-1))


def worked_example(*, n_latents: int = 3, head_dim: int = 2, seed: int = 0) -> WorkedExample:
    """The example ``latte-ref explain`` prints: T = 6 tokens, one head, L latents, values of size D.

    The attention matrices come from :func:`latte_ref.attention_matrix` and the
    outputs from the fast forms; :func:`format_example` shows that they agree.

    Examples
    --------
    >>> from latte_ref.explain import worked_example
    >>> ex = worked_example()
    >>> ex.p_latent.shape, ex.p_key_causal.shape, ex.attention_causal.shape
    ((6, 3), (3, 6, 6), (6, 6))
    """
    if n_latents < 1 or head_dim < 1:
        raise ValueError(f"n_latents and head_dim must be positive, got {n_latents} and {head_dim}")
    rng = np.random.default_rng(seed)
    n = len(TOKENS)
    # Logits of scale 2 rather than 1: distributions peaked enough to tell apart in a picture.
    q, k = LOGIT_SCALE * rng.normal(size=(2, n, n_latents))  # [T, L] each
    v = rng.normal(size=(n, head_dim))  # [T, D]
    heads_qk = (q[:, None, :], k[:, None, :])  # [T, 1, L]: the core's (T, H, L) layout with H = 1
    v_h = v[:, None, :]  # [T, 1, D]
    return WorkedExample(
        tokens=TOKENS,
        q=q,
        k=k,
        v=v,
        p_latent=p_latent_given_query(q),
        p_key_bidirectional=p_key_given_latent(k, causal=False)[:, 0, :],
        p_key_causal=p_key_given_latent(k, causal=True),
        attention_bidirectional=np.asarray(attention_matrix(*heads_qk, causal=False))[0],
        attention_causal=np.asarray(attention_matrix(*heads_qk, causal=True))[0],
        attention_softmax=softmax_attention(q, k, causal=False),
        y_bidirectional=np.asarray(bidirectional(*heads_qk, v_h))[:, 0, :],
        y_causal=np.asarray(causal_form(*heads_qk, v_h))[:, 0, :],  # type: ignore[index]
    )


def _table(rows: np.ndarray, row_labels: list[str], col_labels: list[str], *, blank_zeros: bool = False) -> str:
    width = max(6, *(len(c) for c in col_labels)) + 1
    lead = max(len(r) for r in row_labels) + 2
    lines = [" " * lead + "".join(c.rjust(width) for c in col_labels)]
    for label, row in zip(row_labels, rows, strict=True):
        cells = ("." if blank_zeros and x == 0 else f"{x:.3f}" for x in row)
        lines.append(label.ljust(lead) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)


def format_example(ex: WorkedExample) -> str:
    """The worked example as text: the factors, their product, the output, and the checks."""
    tokens = [f"{i}:{w}" for i, w in enumerate(ex.tokens)]
    latents = [f"l={i}" for i in range(ex.p_latent.shape[1])]
    dims = [f"d={i}" for i in range(ex.v.shape[1])]
    n_lat = len(latents)
    bidirectional_product = ex.p_latent @ ex.p_key_bidirectional
    causal_product = np.einsum("tl,lts->ts", ex.p_latent, ex.p_key_causal)
    parts = [
        f"Latte on T={len(tokens)} tokens, one head, L={n_lat} latents, values of size D={len(dims)}.",
        "Queries and keys are L logits per token; the tokens' embeddings are random.",
        "",
        "p(l | t): each query token's distribution over latents (rows sum to 1)",
        _table(ex.p_latent, tokens, latents),
        "",
        "p(s | l): bidirectional, each latent's distribution over all tokens (rows sum to 1)",
        _table(ex.p_key_bidirectional, latents, tokens),
        "",
        "p(s | l, t): causal, each latent's distribution over the tokens s <= t",
    ]
    for latent in range(n_lat):
        parts += [f"  latent l={latent}", _table(ex.p_key_causal[latent], tokens, tokens, blank_zeros=True)]
    parts += [
        "",
        "p(s | t) = sum_l p(l | t) p(s | l): bidirectional Latte's implied attention matrix",
        _table(ex.attention_bidirectional, tokens, tokens),
        "",
        "p(s | t) = sum_l p(l | t) p(s | l, t): causal Latte's implied attention matrix",
        _table(ex.attention_causal, tokens, tokens, blank_zeros=True),
        "",
        "p(s | t) = softmax_s(q_t . k_s / sqrt(L)): standard attention on the same vectors",
        _table(ex.attention_softmax, tokens, tokens),
        "",
        "values v_s",
        _table(ex.v, tokens, dims),
        "",
        "y_t = sum_s p(s | t) v_s, bidirectional (latte_ref.bidirectional, never forming the matrix)",
        _table(ex.y_bidirectional, tokens, dims),
        "",
        "y_t, causal (latte_ref.causal)",
        _table(ex.y_causal, tokens, dims),
        "",
        "checks, max |difference|:",
    ]
    checks = [
        (
            "factor product vs latte_ref.attention_matrix, bidirectional",
            bidirectional_product,
            ex.attention_bidirectional,
        ),
        ("factor product vs latte_ref.attention_matrix, causal", causal_product, ex.attention_causal),
        ("matrix @ v vs latte_ref.bidirectional", ex.attention_bidirectional @ ex.v, ex.y_bidirectional),
        ("matrix @ v vs latte_ref.causal", ex.attention_causal @ ex.v, ex.y_causal),
    ]
    parts += [f"  {label:<62}{_max_diff(a, b):.1e}" for label, a, b in checks]
    return "\n".join(parts)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "latte-ref explain --plot needs matplotlib, which is not installed: pip install 'latte-ref[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only: no display is needed
    import matplotlib.pyplot as plt

    return plt


MASKED_COLOUR = "lightgrey"
"""The colour of the masked future cells of a causal heatmap, outside the probability colour scale."""

DEFAULT_PLOT = "latte-explain.png"
"""Where ``latte-ref explain --plot`` writes when no path is given."""


def heatmap_cells(matrix: np.ndarray, *, causal: bool) -> np.ndarray:
    """The cells of a heatmap: for a causal matrix, the future keys (s > t) masked rather than 0.

    Examples
    --------
    >>> import numpy as np
    >>> heatmap_cells(np.full((2, 2), 0.5), causal=True).mask.tolist()
    [[False, True], [False, False]]
    """
    future = np.triu(np.ones(matrix.shape, dtype=bool), k=1)
    return np.ma.masked_array(matrix, mask=future if causal else np.zeros_like(future))


def plot_example(ex: WorkedExample, path: str = DEFAULT_PLOT) -> None:
    """Heatmaps of p(s | t): Latte and standard softmax attention, bidirectional and causal, written to ``path``.

    Needs matplotlib (the ``plot`` extra); it is imported here and nowhere else.
    """
    plt = _pyplot()
    causal_softmax = softmax_attention(ex.q, ex.k, causal=True)
    panels = [
        (ex.attention_bidirectional, "Latte, bidirectional"),
        (ex.attention_softmax, "softmax attention, bidirectional"),
        (ex.attention_causal, "Latte, causal"),
        (causal_softmax, "softmax attention, causal"),
    ]
    labels = [f"{i}:{w}" for i, w in enumerate(ex.tokens)]
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 8.2), constrained_layout=True)
    # Masked future keys are drawn in grey, outside the colour scale: a probability of 0 is dark purple.
    cmap = plt.get_cmap("viridis").with_extremes(bad=MASKED_COLOUR)
    image = None
    for ax, (matrix, title) in zip(axes.flat, panels, strict=True):
        image = ax.imshow(heatmap_cells(matrix, causal="causal" in title), vmin=0.0, vmax=1.0, cmap=cmap)
        ax.set_title(title)
        ax.set_xticks(range(len(labels)), labels, rotation=45)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("key s")
        ax.set_ylabel("query t")
        for t in range(matrix.shape[0]):
            for s in range(matrix.shape[1] if "bidirectional" in title else t + 1):  # no labels on the masked half
                # Light text on the dark end of viridis, dark text on the light end.
                ax.text(
                    s,
                    t,
                    f"{matrix[t, s]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[t, s] < 0.5 else "black",
                )
    fig.colorbar(image, ax=axes, shrink=0.6, label="p(s | t)")
    n_latents = ex.q.shape[1]
    latents = f"L={n_latents} latent" + ("" if n_latents == 1 else "s")
    fig.suptitle(
        f"p(s | t) on the same {len(labels)} tokens: Latte with {latents} vs softmax attention\n"
        "grey: masked future keys (s > t), not a probability of 0"
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)
