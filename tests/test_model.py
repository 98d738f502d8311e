"""The Latte Transformer on every backend: decoding equals the parallel forward, the state does not grow."""

from __future__ import annotations

import numpy as np
import pytest

import latte_ref.model as lm
from latte_ref.testing.tolerance import relative_error

VOCAB = 13
SHAPE = (2, 12)  # one token shape throughout: JAX compiles each operation once per shape and dtype
SIZES = {"d_model": 16, "n_layers": 2, "n_heads": 2, "n_latents": 6, "d_hidden": 24}


def _model(case, seed=0):
    dtype = case.array(np.zeros(1)).dtype  # the framework's dtype object, as an array of the case has it
    return lm.init_model(VOCAB, **SIZES, xp=case.xp, dtype=dtype, device=case.device, seed=seed)


def _tokens(case, rng, shape):
    return case.array(rng.integers(0, VOCAB, size=shape), dtype="int64")


def _state_sizes(state):
    return [tuple(a.shape) for layer in state.layers for a in layer] + [tuple(state.position.shape)]


def test_decode_matches_forward_float64(case64, rng):
    model = _model(case64)
    tokens = _tokens(case64, rng, SHAPE)
    expected = lm.forward(model, tokens)  # [2, T, V]
    state = lm.init_decode_state(model, (2,))
    decoded = []
    for t in range(tokens.shape[-1]):
        logits, state = lm.decode_step(model, tokens[:, t], state)
        decoded.append(logits)
    # One conversion at the end: a lazy backend (Dask) then evaluates the chain of steps once.
    actual, expected = case64.numpy(case64.xp.stack(decoded, axis=1)), case64.numpy(expected)
    for t in range(tokens.shape[-1]):
        assert relative_error(actual[:, t], expected[:, t]) <= 1e-10, t


def test_prefill_then_decode_matches_forward(case64, rng):
    model = _model(case64)
    tokens = _tokens(case64, rng, SHAPE)
    expected = case64.numpy(lm.forward(model, tokens))
    _, state = lm.forward(model, tokens[:, :8], return_state=True)
    assert int(case64.numpy(state.position)) == 8
    for t in range(8, SHAPE[1]):
        logits, state = lm.decode_step(model, tokens[:, t], state)
        assert relative_error(case64.numpy(logits), expected[:, t]) <= 1e-10


def test_decode_state_size_does_not_depend_on_position(case64, rng):
    model = _model(case64)
    state = lm.init_decode_state(model, (2,))
    sizes = _state_sizes(state)
    tokens = _tokens(case64, rng, (2, 60))
    for t in range(3):
        _, state = lm.decode_step(model, tokens[:, t], state)
        assert _state_sizes(state) == sizes
    for n in (1, 60):  # a prefill of any length, and a step after it, keep the same shapes
        _, prefilled = lm.forward(model, tokens[:, :n], return_state=True)
        assert _state_sizes(prefilled) == sizes
        _, stepped = lm.decode_step(model, tokens[:, 0], prefilled)
        assert _state_sizes(stepped) == sizes
        assert int(case64.numpy(stepped.position)) == n + 1


@pytest.mark.parametrize("causal", [True, False])
def test_forward_definition_equals_fast_path(case, rng, causal):
    model = _model(case)
    tokens = _tokens(case, rng, SHAPE)
    fast = lm.forward(model, tokens, causal=causal)
    assert tuple(fast.shape) == (*SHAPE, VOCAB) and fast.dtype == model.weights["embedding"].dtype
    oracle = case.numpy(lm.forward(model, tokens, causal=causal, form="definition"))
    assert relative_error(case.numpy(fast), oracle) <= case.tol


def test_forward_matches_float64_numpy(case, rng):
    """The same seed gives the same model on every backend; its logits agree with the NumPy float64 ones."""
    model = _model(case)
    tokens_np = rng.integers(0, VOCAB, size=SHAPE)
    reference = lm.forward(lm.init_model(VOCAB, **SIZES, dtype=np.float64), tokens_np)
    assert relative_error(case.numpy(lm.forward(model, case.array(tokens_np, dtype="int64"))), reference) <= case.tol


def test_forward_is_causal(case64, rng):
    """Changing a later token leaves every earlier position's logits unchanged (and changes its own)."""
    model = _model(case64)
    tokens_np = rng.integers(0, VOCAB, size=SHAPE)
    changed_np = tokens_np.copy()
    changed_np[0, 9] = (changed_np[0, 9] + 1) % VOCAB
    a, b = (case64.numpy(lm.forward(model, case64.array(t, dtype="int64"))) for t in (tokens_np, changed_np))
    assert relative_error(b[:, :9], a[:, :9]) <= 1e-12
    assert relative_error(b[:, 9:], a[:, 9:]) > 1e-3


def test_generate_is_seeded_and_greedy_follows_argmax(case64, rng):
    if case64.backend.name == "dask":
        pytest.skip("sampling feeds each lazy token into the next step's graph; decoding is tested above")
    model = _model(case64)
    prompt = _tokens(case64, rng, (2, 4))
    sampled = case64.numpy(lm.generate(model, prompt, 6, temperature=1.0, seed=3))
    again = case64.numpy(lm.generate(model, prompt, 6, temperature=1.0, seed=3))
    assert sampled.shape == (2, 6) and np.array_equal(sampled, again)
    greedy = lm.generate(model, prompt, 5, temperature=0.0)
    sequence = np.concatenate([case64.numpy(prompt), case64.numpy(greedy)], axis=-1).astype(np.int64)
    logits = case64.numpy(lm.forward(model, case64.array(sequence, dtype="int64")))
    np.testing.assert_array_equal(np.argmax(logits[:, 3:-1], axis=-1), sequence[:, 4:])


def test_next_token_loss_is_cross_entropy(case64, rng):
    model = _model(case64)
    tokens_np = rng.integers(0, VOCAB, size=(2, SHAPE[1] + 1))
    logits = case64.numpy(lm.forward(model, case64.array(tokens_np[:, :-1], dtype="int64")))
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_p, tokens_np[:, 1:, None], axis=-1).mean()
    loss = case64.numpy(lm.next_token_loss(model, case64.array(tokens_np, dtype="int64")))
    assert abs(float(loss) - expected) <= 1e-12 * abs(expected)


def test_bad_arguments_are_refused():
    model = lm.init_model(VOCAB, **SIZES)
    tokens = np.zeros((2, 5), dtype=np.int64)
    with pytest.raises(TypeError, match="integer"):
        lm.forward(model, tokens.astype(np.float64))
    with pytest.raises(ValueError, match="form"):
        lm.forward(model, tokens, form="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="return_state"):
        lm.forward(model, tokens, form="definition", return_state=True)
    with pytest.raises(ValueError, match="divisible"):
        lm.init_model(VOCAB, d_model=16, n_layers=1, n_heads=3, n_latents=6)
    with pytest.raises(TypeError, match="DecodeState"):
        lm.decode_step(model, tokens[:, 0], lm.init_decode_state(lm.init_model(VOCAB, **{**SIZES, "n_layers": 1})))
