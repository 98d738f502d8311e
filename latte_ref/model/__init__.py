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

The package, by topic: :mod:`~latte_ref.model.config` (configuration, weights, initialisation,
tree utilities), :mod:`~latte_ref.model.blocks` (the pieces of a block),
:mod:`~latte_ref.model.forward` (every position at once, the loss) and
:mod:`~latte_ref.model.decode` (one token at a time, sampling).
"""

from __future__ import annotations

# The pieces of a block stay importable from here, as before, without joining __all__.
from .._layer import Form as Form
from .blocks import LAYER_NORM_EPS as LAYER_NORM_EPS
from .blocks import embed as embed
from .blocks import gated_mlp as gated_mlp
from .blocks import gelu as gelu
from .blocks import latent_projections as latent_projections
from .blocks import layer_norm as layer_norm
from .blocks import merge_heads as merge_heads
from .blocks import sinusoidal_position as sinusoidal_position
from .config import DecodeState, LatteModel, ModelConfig, init_model, leaves, tree_map
from .decode import decode_step, generate, init_decode_state
from .forward import forward, next_token_loss

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
