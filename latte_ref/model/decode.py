"""The recurrent form of the model: one token at a time in constant time and memory, and sampling."""

from __future__ import annotations

import numpy as np

from .._array import Array, compute_dtype, device_of, namespace_of
from ..recurrent import step
from ..state import init_state
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
from .forward import forward

__all__ = ["decode_step", "generate", "init_decode_state"]


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
