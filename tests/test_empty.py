"""Empty inputs: a batch of 0 rows, sequences of 0 tokens, or both, in every form, on every backend and dtype.

An empty batch axis is what a data loader's last, empty shard or a filtered batch gives. Every form
(with and without ``mask``, ``segment_ids`` and a state), :func:`latte_ref.latte_attention` and the
torch and Flax layers must return results of the right empty shapes and dtypes, without raising.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import latte_ref

H, L, D = 2, 3, 4
# (batch, T): no rows, no tokens, neither.
SHAPES = [((0,), 5), ((2,), 0), pytest.param((0, 3), 0, marks=pytest.mark.full_matrix, id="((0, 3), 0)")]


def _qkv(case: Any, batch: tuple[int, ...], n_tokens: int) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(0)
    q, k = (case.array(rng.normal(size=(*batch, n_tokens, H, L))) for _ in range(2))
    return q, k, case.array(rng.normal(size=(*batch, n_tokens, H, D)))


def _options(case: Any, batch: tuple[int, ...], n_tokens: int) -> dict[str, dict[str, Any]]:
    """No option, a mask, segment ids, and both."""
    mask = case.array(np.ones((*batch, n_tokens), dtype=bool))
    ids = case.array(np.zeros((*batch, n_tokens), dtype=np.int32))
    return {
        "plain": {},
        "mask": {"mask": mask},
        "ids": {"segment_ids": ids},
        "both": {"mask": mask, "segment_ids": ids},
    }


def _state_dtype(case: Any) -> Any:
    """The computation dtype, which the state keeps: float32 for 16-bit inputs."""
    return case.xp.float32 if case.dtype_name in ("float16", "bfloat16") else case.dtype


def _check_y(case: Any, y: Any, shape: tuple[int, ...], what: str) -> None:
    assert tuple(y.shape) == shape, f"{what}: shape {tuple(y.shape)}, expected {shape}"
    assert y.dtype == case.dtype, f"{what}: dtype {y.dtype}, expected {case.dtype}"
    assert case.numpy(y).size == 0


def _check_state(case: Any, state: latte_ref.LatteState, batch: tuple[int, ...], what: str) -> None:
    for name, a, shape in zip(state._fields, state, ((*batch, H, L), (*batch, H, L), (*batch, H, L, D)), strict=True):
        assert tuple(a.shape) == shape, f"{what}: state.{name} has shape {tuple(a.shape)}, expected {shape}"
        assert a.dtype == _state_dtype(case), f"{what}: state.{name} has dtype {a.dtype}"


@pytest.mark.parametrize(("batch", "n_tokens"), SHAPES, ids=str)
def test_causal_and_recurrent_take_empty_inputs(case, batch, n_tokens):
    q, k, v = _qkv(case, batch, n_tokens)
    out = (*batch, n_tokens, H, D)
    for name, options in _options(case, batch, n_tokens).items():
        for chunk_size in (None, 2):
            y, state = latte_ref.causal(q, k, v, chunk_size=chunk_size, return_state=True, **options)
            _check_y(case, y, out, f"causal, {name}, C={chunk_size}")
            _check_state(case, state, batch, f"causal, {name}")
            y = latte_ref.causal(q, k, v, chunk_size=chunk_size, state=state, **options)
            _check_y(case, y, out, f"causal after a state, {name}, C={chunk_size}")
        y, state = latte_ref.recurrent(q, k, v, return_state=True, **options)
        _check_y(case, y, out, f"recurrent, {name}")
        _check_state(case, state, batch, f"recurrent, {name}")
        _check_y(case, latte_ref.recurrent(q, k, v, state=state, **options), out, f"recurrent after a state, {name}")


@pytest.mark.parametrize(("batch", "n_tokens"), SHAPES, ids=str)
def test_causal_and_recurrent_continue_an_initial_state_of_an_empty_batch(case, batch, n_tokens):
    q, k, v = _qkv(case, batch, n_tokens)
    state = latte_ref.init_state(batch, H, L, D, xp=case.xp, dtype=_state_dtype(case), device=case.device)
    _check_state(case, state, batch, "init_state")
    for name, form in (("causal", latte_ref.causal), ("recurrent", latte_ref.recurrent)):
        y, after = form(q, k, v, state=state, return_state=True)
        _check_y(case, y, (*batch, n_tokens, H, D), name)
        _check_state(case, after, batch, name)


@pytest.mark.parametrize("batch", [(0,), (0, 3)], ids=str)
def test_step_takes_an_empty_batch(case, batch):
    q, k, v = (a[..., 0, :, :] for a in _qkv(case, batch, 1))
    state = latte_ref.init_state(batch, H, L, D, xp=case.xp, dtype=_state_dtype(case), device=case.device)
    mask_t = case.array(np.ones(batch, dtype=bool))
    for start in (None, state):
        for options in ({}, {"mask_t": mask_t}):
            y, after = latte_ref.step(q, k, v, start, **options)
            _check_y(case, y, (*batch, H, D), f"step from {start is not None and 'a state'}, {options}")
            _check_state(case, after, batch, "step")


@pytest.mark.parametrize(("batch", "n_tokens"), SHAPES, ids=str)
def test_bidirectional_and_definition_take_empty_inputs(case, batch, n_tokens):
    q, k, v = _qkv(case, batch, n_tokens)
    out = (*batch, n_tokens, H, D)
    for name, options in _options(case, batch, n_tokens).items():
        _check_y(case, latte_ref.bidirectional(q, k, v, **options), out, f"bidirectional, {name}")
        for causal in (False, True):
            _check_y(case, latte_ref.definition(q, k, v, causal=causal, **options), out, f"definition, {name}")
    key_mask = case.array(np.ones((*batch, n_tokens), dtype=bool))
    _check_y(case, latte_ref.bidirectional(q, k, v, key_mask=key_mask), out, "bidirectional, key_mask")


@pytest.mark.parametrize(("batch", "n_tokens"), SHAPES, ids=str)
def test_attention_matrix_takes_empty_inputs(case, batch, n_tokens):
    q, k, _ = _qkv(case, batch, n_tokens)
    for causal in (False, True):
        a = latte_ref.attention_matrix(q, k, causal=causal)
        assert tuple(a.shape) == (*batch, H, n_tokens, n_tokens)
        assert case.numpy(a).size == 0


@pytest.mark.parametrize(("batch", "n_tokens"), SHAPES, ids=str)
def test_latte_attention_takes_empty_inputs(case, batch, n_tokens):
    params = latte_ref.init_params(8, 4, 2, xp=case.xp, dtype=case.dtype, device=case.device)
    x = case.array(np.zeros((*batch, n_tokens, 8)))
    for name, options in _options(case, batch, n_tokens).items():
        for causal in (True, False):
            y = latte_ref.latte_attention(x, params, causal=causal, **options)
            assert tuple(y.shape) == (*batch, n_tokens, 8) and y.dtype == case.dtype, f"{name}, causal={causal}"


LAYER_SHAPES = [(0, 5), (2, 0), (0, 0)]


@pytest.mark.parametrize(("batch", "n_tokens"), LAYER_SHAPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_torch_layer_takes_empty_inputs(batch, n_tokens, causal):
    torch = pytest.importorskip("torch")
    from latte_ref.layers.torch import LatteAttention

    layer = LatteAttention(8, 4, 2, causal=causal)
    x = torch.zeros(batch, n_tokens, 8, requires_grad=True)
    mask = torch.ones(batch, n_tokens, dtype=torch.bool)
    ids = torch.zeros(batch, n_tokens, dtype=torch.int64)
    for options in ({}, {"mask": mask}, {"segment_ids": ids}, {"mask": mask, "segment_ids": ids}):
        y = layer(x, **options)
        assert y.shape == (batch, n_tokens, 8) and y.dtype == torch.float32, f"{list(options)}"
    y.sum().backward()  # a backward pass runs (with no tokens, x may be left out of the graph)
    assert x.grad is None or x.grad.shape == x.shape
    if causal:
        y, state = layer(x, return_state=True)
        assert y.shape == (batch, n_tokens, 8) and state.numerator.shape == (batch, 2, 2, 4)
        assert layer(x, state=state).shape == (batch, n_tokens, 8)
    else:
        context = torch.zeros(batch, 3, 8)
        assert layer(x, context=context, context_mask=torch.ones(batch, 3, dtype=torch.bool)).shape == x.shape


@pytest.mark.parametrize(("batch", "n_tokens"), LAYER_SHAPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_flax_layer_takes_empty_inputs(batch, n_tokens, causal):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    from flax import nnx

    from latte_ref.layers.flax import LatteAttention

    jnp = jax.numpy
    layer = LatteAttention(8, 4, 2, causal=causal, rngs=nnx.Rngs(0))
    x = jnp.zeros((batch, n_tokens, 8))
    mask = jnp.ones((batch, n_tokens), dtype=bool)
    ids = jnp.zeros((batch, n_tokens), dtype=jnp.int32)
    for options in ({}, {"mask": mask}, {"segment_ids": ids}, {"mask": mask, "segment_ids": ids}):
        y = layer(x, **options)
        assert y.shape == (batch, n_tokens, 8) and y.dtype == x.dtype, f"{list(options)}"
    if causal:
        y, state = layer(x, return_state=True)
        assert y.shape == (batch, n_tokens, 8) and state.numerator.shape == (batch, 2, 2, 4)
        assert layer(x, state=state).shape == (batch, n_tokens, 8)
