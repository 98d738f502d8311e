"""A small causal Latte Transformer, written once against the Array API.

The model is the usual decoder-only stack with Latte in place of softmax attention::

    x_0 = E[token_t] + P(t)                                  embedding + sinusoidal position
    x'  = x + Latte(LayerNorm(x)) W_o                        mixer, pre-LayerNorm, residual
    x   = x' + (gelu(LN(x') W_gate) * (LN(x') W_up)) W_down  gated MLP, pre-LayerNorm, residual
    logits = LayerNorm(x_N) W_unembed

Positions are sinusoidal, not learned. A sinusoid is a function of the position, not a
row of a table: decoding token t costs the same for every t and needs no table sized
for the longest context, and the model can be run (as the generation benchmark does)
far past the length it was trained on without reading untrained rows. The causal
Latte mixer already orders tokens (each sees only its past), so the absolute signal
is a small addition, and a learned table would tie the model to a maximum length.

The parameters are plain nested dicts and lists of arrays (:attr:`LatteModel.weights`),
which ``torch.autograd`` and ``jax.grad`` take as they are; the integer hyper-parameters
live apart, in the frozen :class:`ModelConfig`, so they never enter a differentiated tree.

Decoding carries one :class:`latte_ref.LatteState` per layer and the position: its size
is fixed by the configuration, whatever the number of tokens seen (there is no KV cache).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from ._array import Array, compute_dtype, device_of, namespace_of
from ._layer import resolve_namespace
from .bidirectional import bidirectional
from .causal import causal as causal_form
from .definition import definition
from .recurrent import recurrent, step
from .state import LatteState, init_state

__all__ = [
    "DecodeState",
    "LatteModel",
    "ModelConfig",
    "decode_step",
    "forward",
    "generate",
    "init_decode_state",
    "init_model",
    "leaves",
    "next_token_loss",
    "tree_map",
]

Form = Literal["definition", "recurrent"]
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class ModelConfig:
    """The integer hyper-parameters of a :class:`LatteModel` (never differentiated).

    Attributes
    ----------
    vocab_size : int
        V, the number of token ids.
    d_model : int
        Width of the residual stream; even (sin and cos halves of the positions).
    n_layers : int
        Number of blocks.
    n_heads : int
        H; divides ``d_model`` and ``n_latents``.
    n_latents : int
        Latents over all heads (``n_latents // n_heads`` per head), as in :class:`latte_ref.LatteParams`.
    d_hidden : int
        Width of the gated MLP.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_latents: int
    d_hidden: int

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_latents", "d_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for sinusoidal positions, got {self.d_model}")
        if self.d_model % self.n_heads or self.n_latents % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) and n_latents ({self.n_latents}) "
                f"must be divisible by n_heads ({self.n_heads})"
            )

    @property
    def latents_per_head(self) -> int:
        return self.n_latents // self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class LatteModel:
    """A configuration and its weights.

    ``weights`` is a dict::

        embedding    (V, d_model)
        blocks       list of n_layers dicts:
            mixer_norm   {"scale": (d_model,), "bias": (d_model,)}
            wq, wk       (d_model, n_latents)      latent logits of queries and keys
            wv, wo       (d_model, d_model)        values and output
            mlp_norm     {"scale", "bias"}
            w_gate, w_up (d_model, d_hidden)
            w_down       (d_hidden, d_model)
        final_norm   {"scale", "bias"}
        unembedding  (d_model, V)

    To differentiate, rebuild the model around the weights being traced, e.g.
    ``jax.grad(lambda w: next_token_loss(LatteModel(model.config, w), tokens))(model.weights)``.
    """

    config: ModelConfig
    weights: dict[str, Any]


class DecodeState(NamedTuple):
    """What decoding carries from one token to the next: one Latte state per layer and the position.

    Attributes
    ----------
    layers : tuple of LatteState
        The state of each layer's mixer, shapes (..., H, L) and (..., H, L, D).
    position : int array, shape ()
        Index of the next token (the number of tokens seen).
    """

    layers: tuple[LatteState, ...]
    position: Array


def init_model(
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_latents: int,
    *,
    d_hidden: int | None = None,
    xp: Any = None,
    dtype: Any = None,
    device: Any = None,
    seed: int = 0,
) -> LatteModel:
    """Random weights, drawn with NumPy from ``seed`` so that every backend gets the same model.

    Matrices are normal with standard deviation ``1 / sqrt(fan_in)``; the two that write
    into the residual stream (``wo``, ``w_down``) are further scaled by
    ``1 / sqrt(2 n_layers)`` so the stream's variance does not grow with depth. Norms
    start as the identity, the embedding has unit variance like the positions.

    Parameters
    ----------
    vocab_size, d_model, n_layers, n_heads, n_latents : int
        See :class:`ModelConfig`.
    d_hidden : int, optional
        Width of the gated MLP; ``4 * d_model`` when omitted.
    xp : namespace, optional
        Array namespace of the weights; NumPy when omitted.
    dtype, device : optional
        Floating dtype (the namespace's default when omitted) and device.
    seed : int

    Examples
    --------
    >>> import latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_latents=8)
    >>> model.weights["blocks"][0]["wq"].shape, model.config.latents_per_head
    ((16, 8), 2)
    """
    d_hidden = 4 * d_model if d_hidden is None else d_hidden
    config = ModelConfig(vocab_size, d_model, n_layers, n_heads, n_latents, d_hidden)
    xp = resolve_namespace(xp)
    if dtype is None:
        dtype = xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]
    rng = np.random.default_rng(seed)
    residual_scale = 1.0 / math.sqrt(2 * n_layers)

    def matrix(rows: int, cols: int, scale: float = 1.0) -> Array:
        return xp.asarray(rng.normal(scale=scale / math.sqrt(rows), size=(rows, cols)), dtype=dtype, device=device)

    def norm() -> dict[str, Array]:
        return {
            "scale": xp.ones((config.d_model,), dtype=dtype, device=device),
            "bias": xp.zeros((config.d_model,), dtype=dtype, device=device),
        }

    d, f = config.d_model, config.d_hidden
    blocks = [
        {
            "mixer_norm": norm(),
            "wq": matrix(d, n_latents),
            "wk": matrix(d, n_latents),
            "wv": matrix(d, d),
            "wo": matrix(d, d, residual_scale),
            "mlp_norm": norm(),
            "w_gate": matrix(d, f),
            "w_up": matrix(d, f),
            "w_down": matrix(f, d, residual_scale),
        }
        for _ in range(n_layers)
    ]
    weights = {
        "embedding": xp.asarray(rng.normal(size=(vocab_size, d)), dtype=dtype, device=device),
        "blocks": blocks,
        "final_norm": norm(),
        "unembedding": matrix(d, vocab_size),
    }
    return LatteModel(config, weights)


def leaves(tree: Any) -> Iterator[Array]:
    """The arrays of a nested dict/list/tuple, in a fixed order (dict keys sorted): e.g. for an optimiser.

    Examples
    --------
    >>> import latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=5, d_model=4, n_layers=1, n_heads=1, n_latents=2, d_hidden=8)
    >>> sum(int(np.prod(w.shape)) for w in lm.leaves(model.weights))
    208
    """
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from leaves(tree[key])
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from leaves(item)
    else:
        yield tree


# -- pieces ------------------------------------------------------------------------------------


def sinusoidal_position(xp: Any, positions: Array, d_model: int, dtype: Any) -> Array:
    r"""``P(t) = [sin(t ω_i), cos(t ω_i)]`` with ``ω_i = 10000^{-2i/d}``, i < d/2: positions (...) -> (..., d)."""
    half = d_model // 2
    frequencies = xp.exp(
        xp.arange(half, dtype=dtype, device=device_of(positions)) * (-math.log(10000.0) / half)
    )  # [d/2]
    angles = xp.astype(positions, dtype)[..., None] * frequencies  # [..., d/2]
    return xp.concat([xp.sin(angles), xp.cos(angles)], axis=-1)  # [..., d]


def layer_norm(xp: Any, x: Array, norm: dict[str, Array]) -> Array:
    r"""``(x - μ) / sqrt(σ² + ε) * scale + bias`` over the last axis (..., d)."""
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    variance = xp.mean(centred * centred, axis=-1, keepdims=True)
    return centred / xp.sqrt(variance + LAYER_NORM_EPS) * norm["scale"] + norm["bias"]


def gelu(xp: Any, x: Array) -> Array:
    r"""GELU, tanh form: ``x/2 (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`` (the standard has no erf)."""
    return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def gated_mlp(xp: Any, x: Array, block: dict[str, Any]) -> Array:
    r"""``(gelu(x W_gate) ⊙ x W_up) W_down``: (..., d) -> (..., d)."""
    return (gelu(xp, x @ block["w_gate"]) * (x @ block["w_up"])) @ block["w_down"]


def embed(xp: Any, embedding: Array, tokens: Array) -> Array:
    """Rows of the embedding: integer tokens (...) -> (..., d)."""
    rows = xp.take(embedding, xp.reshape(tokens, (-1,)), axis=0)  # [N, d]
    return xp.reshape(rows, (*tokens.shape, embedding.shape[-1]))


def latent_projections(xp: Any, h: Array, block: dict[str, Any], config: ModelConfig) -> tuple[Array, Array, Array]:
    """q, k: (..., H, L) and v: (..., H, D) from the normed stream h (..., d); head h owns the h-th column group."""
    heads = config.n_heads
    q = xp.reshape(h @ block["wq"], (*h.shape[:-1], heads, config.latents_per_head))
    k = xp.reshape(h @ block["wk"], (*h.shape[:-1], heads, config.latents_per_head))
    v = xp.reshape(h @ block["wv"], (*h.shape[:-1], heads, config.head_dim))
    return q, k, v


def merge_heads(xp: Any, y: Array, block: dict[str, Any]) -> Array:
    """(..., H, D) -> (..., d) @ W_o."""
    return xp.reshape(y, (*y.shape[:-2], y.shape[-2] * y.shape[-1])) @ block["wo"]


def _compute_weights(model: LatteModel) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(xp, out_dtype, dtype, weights in dtype)``: 16-bit weights compute in float32, as in the core."""
    if not isinstance(model, LatteModel):
        raise TypeError(f"params must be a LatteModel, got {type(model).__name__}")
    embedding = model.weights["embedding"]
    xp = namespace_of(embedding=embedding)
    out_dtype, dtype = compute_dtype(xp, embedding)
    weights = model.weights if dtype == out_dtype else tree_map(lambda w: xp.astype(w, dtype), model.weights)
    return xp, out_dtype, dtype, weights


def tree_map(fn: Any, tree: Any) -> Any:
    """``fn`` applied to every array of a nested dict/list/tuple, keeping the structure.

    Examples
    --------
    >>> import latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=5, d_model=4, n_layers=1, n_heads=1, n_latents=2)
    >>> lm.tree_map(lambda w: w.shape, model.weights)["blocks"][0]["wq"]
    (4, 2)
    """
    if isinstance(tree, dict):
        return {key: tree_map(fn, value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, item) for item in tree)
    return fn(tree)


def _check_tokens(xp: Any, tokens: Array, name: str, min_ndim: int) -> None:
    if not hasattr(tokens, "dtype") or not xp.isdtype(tokens.dtype, "integral"):
        raise TypeError(f"{name} must be an integer array of token ids, got {getattr(tokens, 'dtype', type(tokens))}")
    if tokens.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got shape {tuple(tokens.shape)}")


# -- the parallel form ------------------------------------------------------------------------


def forward(
    params: LatteModel,
    tokens: Array,
    *,
    causal: bool = True,
    form: Form | None = None,
    return_state: bool = False,
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
    if form not in (None, "definition", "recurrent"):
        raise ValueError(f"form must be None, 'definition' or 'recurrent', got {form!r}")
    if form == "recurrent" and not causal:
        raise ValueError("form='recurrent' exists only for causal=True")
    if return_state and (form is not None or not causal):
        raise ValueError("return_state needs the fast causal path (causal=True, form=None)")

    n_tokens = tokens.shape[-1]
    positions = xp.arange(n_tokens, device=device_of(tokens))  # [T]
    x = embed(xp, weights["embedding"], tokens)  # [..., T, d]
    x = x + sinusoidal_position(xp, positions, config.d_model, dtype)
    layer_states = []
    for block in weights["blocks"]:
        q, k, v = latent_projections(xp, layer_norm(xp, x, block["mixer_norm"]), block, config)  # [..., T, H, L|D]
        if form == "definition":
            y = definition(q, k, v, causal=causal)
        elif form == "recurrent":
            y = recurrent(q, k, v)
        elif causal:
            y, state = causal_form(q, k, v, return_state=True)
            layer_states.append(state)
        else:
            y = bidirectional(q, k, v)
        x = x + merge_heads(xp, y, block)
        x = x + gated_mlp(xp, layer_norm(xp, x, block["mlp_norm"]), block)
    logits = xp.astype(layer_norm(xp, x, weights["final_norm"]) @ weights["unembedding"], out_dtype)  # [..., T, V]
    if not return_state:
        return logits
    return logits, DecodeState(tuple(layer_states), xp.asarray(n_tokens, device=device_of(tokens)))


def next_token_loss(params: LatteModel, tokens: Array, *, form: Form | None = None) -> Array:
    r"""Mean cross-entropy of each next token: :math:`-\frac{1}{T-1} \sum_t \log p(\text{token}_{t+1} \mid \le t)`.

    tokens (..., T) with T >= 2 -> a 0-d array, averaged over the batch as well.

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
    logits = forward(params, tokens[..., :-1], form=form)  # [..., T-1, V]
    _, dtype = compute_dtype(xp, logits)
    logits = xp.astype(logits, dtype)
    shift = xp.max(logits, axis=-1, keepdims=True)
    log_p = logits - shift - xp.log(xp.sum(xp.exp(logits - shift), axis=-1, keepdims=True))  # [..., T-1, V]
    # A comparison with arange picks each target's log-probability without a gather.
    is_target = tokens[..., 1:, None] == xp.arange(logits.shape[-1], device=device_of(logits))  # [..., T-1, V]
    return -xp.mean(xp.sum(xp.where(is_target, log_p, xp.zeros_like(log_p)), axis=-1))


# -- the recurrent form -----------------------------------------------------------------------


def init_decode_state(params: LatteModel, batch_shape: tuple[int, ...] = ()) -> DecodeState:
    """The state before any token: every layer's Latte state empty, position 0.

    Examples
    --------
    >>> import latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_latents=8)
    >>> state = lm.init_decode_state(model, (3,))
    >>> len(state.layers), state.layers[0].numerator.shape, int(state.position)
    (2, (3, 4, 2, 4), 0)
    """
    xp, _, dtype, weights = _compute_weights(params)
    config = params.config
    device = device_of(weights["embedding"])
    layers = tuple(
        init_state(
            tuple(batch_shape),
            config.n_heads,
            config.latents_per_head,
            config.head_dim,
            xp=xp,
            dtype=dtype,
            device=device,
        )
        for _ in range(config.n_layers)
    )
    return DecodeState(layers, xp.asarray(0, device=device))


def decode_step(params: LatteModel, token: Array, state: DecodeState) -> tuple[Array, DecodeState]:
    r"""One token through every layer with :func:`latte_ref.step`: O(L·D) per layer, whatever the position.

    Parameters
    ----------
    params : LatteModel
    token : integer array, shape (...)
        The token at position ``state.position``.
    state : DecodeState
        From :func:`init_decode_state`, :func:`forward` (``return_state=True``) or a previous step.

    Returns
    -------
    logits : array, shape (..., V)
        For the token after this one; equal to ``forward(params, tokens)[..., t, :]``.
    state : DecodeState
        After this token; the same shapes as the input state.

    Examples
    --------
    >>> import numpy as np, latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_latents=8)
    >>> tokens = np.random.default_rng(0).integers(0, 11, size=(2, 5))
    >>> state = lm.init_decode_state(model, (2,))
    >>> for t in range(5):
    ...     logits, state = lm.decode_step(model, tokens[:, t], state)
    >>> bool(np.allclose(logits, lm.forward(model, tokens)[:, -1]))
    True
    """
    xp, out_dtype, dtype, weights = _compute_weights(params)
    config = params.config
    _check_tokens(xp, token, "token", 0)
    if not isinstance(state, DecodeState) or len(state.layers) != config.n_layers:
        raise TypeError(f"state must be a DecodeState with {config.n_layers} layers")

    x = embed(xp, weights["embedding"], token)  # [..., d]
    x = x + sinusoidal_position(xp, state.position, config.d_model, dtype)
    layer_states = []
    for block, layer_state in zip(weights["blocks"], state.layers, strict=True):
        q_t, k_t, v_t = latent_projections(xp, layer_norm(xp, x, block["mixer_norm"]), block, config)  # [..., H, L|D]
        y_t, layer_state = step(q_t, k_t, v_t, layer_state)
        layer_states.append(layer_state)
        x = x + merge_heads(xp, y_t, block)
        x = x + gated_mlp(xp, layer_norm(xp, x, block["mlp_norm"]), block)
    logits = xp.astype(layer_norm(xp, x, weights["final_norm"]) @ weights["unembedding"], out_dtype)  # [..., V]
    return logits, DecodeState(tuple(layer_states), state.position + 1)


def generate(params: LatteModel, prompt: Array, n_tokens: int, *, temperature: float = 1.0, seed: int = 0) -> Array:
    r"""Sample ``n_tokens`` after ``prompt``: a parallel prefill, then one :func:`decode_step` per token.

    Sampling is the Gumbel-max trick, :math:`\arg\max_v (\text{logits}_v / \tau + g_v)` with
    Gumbel noise ``g`` drawn by NumPy from ``seed`` and moved to the model's device, so the
    same seed gives the same tokens on every backend (up to rounding) and no sample
    leaves the device. ``temperature=0`` is greedy decoding.

    Parameters
    ----------
    params : LatteModel
    prompt : integer array, shape (..., T0), T0 >= 1
    n_tokens : int
    temperature : float
    seed : int

    Returns
    -------
    tokens : integer array, shape (..., n_tokens): the continuation, without the prompt.

    Examples
    --------
    >>> import numpy as np, latte_ref.model as lm
    >>> model = lm.init_model(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_latents=8)
    >>> out = lm.generate(model, np.asarray([[1, 2, 3]]), 6, temperature=0.8, seed=1)
    >>> out.shape, bool(np.all((0 <= out) & (out < 11)))
    ((1, 6), True)
    """
    xp = namespace_of(prompt=prompt)
    _check_tokens(xp, prompt, "prompt", 1)
    if prompt.shape[-1] < 1:
        raise ValueError("prompt needs at least one token")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be a non-negative int, got {n_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    rng = np.random.default_rng(seed)
    logits, state = forward(params, prompt, return_state=True)  # type: ignore[misc]
    logits = logits[..., -1, :]  # [..., V]
    _, dtype = compute_dtype(xp, logits)
    out = []
    for i in range(n_tokens):
        scores = xp.astype(logits, dtype)
        if temperature > 0:
            gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, size=tuple(scores.shape))))
            scores = scores / temperature + xp.asarray(gumbel, dtype=dtype, device=device_of(scores))
        token = xp.astype(xp.argmax(scores, axis=-1), prompt.dtype)  # [...]
        out.append(token)
        if i + 1 < n_tokens:
            logits, state = decode_step(params, token, state)
    if not out:
        return xp.zeros((*prompt.shape[:-1], 0), dtype=prompt.dtype, device=device_of(prompt))
    return xp.stack(out, axis=-1)
