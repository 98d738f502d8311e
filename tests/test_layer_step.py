"""The layers' one-token path (latte_ref.step) equals the chunked causal form; clear dtype errors."""

from __future__ import annotations

import numpy as np
import pytest

D_MODEL, N_LATENTS, N_HEADS, T = 16, 8, 4, 9


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, T, D_MODEL))


def _mask() -> np.ndarray:
    mask = np.ones((2, T), dtype=bool)
    mask[0, 3] = mask[1, 6:] = False
    return mask


@pytest.mark.parametrize("with_mask", [False, True])
def test_torch_layer_decodes_token_by_token_as_one_call(with_mask):
    torch = pytest.importorskip("torch")
    from latte_ref.layers.torch import LatteAttention

    torch.manual_seed(0)
    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=True, dtype=torch.float64)
    x = torch.from_numpy(_x())
    mask = torch.from_numpy(_mask()) if with_mask else None
    whole, final = layer(x, mask=mask, return_state=True)
    state, outputs = None, []
    for t in range(T):
        y_t, state = layer(
            x[:, t : t + 1], mask=None if mask is None else mask[:, t : t + 1], state=state, return_state=True
        )
        outputs.append(y_t)
    torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(state, final, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # A prefill then one-token steps (state given, return_state off for the last one).
    _, state = layer(x[:, :5], mask=None if mask is None else mask[:, :5], return_state=True)
    last = layer(x[:, 5:6], mask=None if mask is None else mask[:, 5:6], state=state)
    torch.testing.assert_close(last, whole[:, 5:6], rtol=1e-12, atol=1e-12)


def test_torch_layer_one_token_goes_through_step(monkeypatch):
    torch = pytest.importorskip("torch")
    import latte_ref._layer as layer_module
    from latte_ref.layers.torch import LatteAttention

    calls = []
    real_step = layer_module.step
    monkeypatch.setattr(layer_module, "step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=True)
    _, state = layer(torch.randn(1, 3, D_MODEL), return_state=True)
    layer(torch.randn(1, 1, D_MODEL), state=state)
    assert calls == [1]


def test_torch_layer_bad_mask_on_one_token_names_mask():
    torch = pytest.importorskip("torch")
    from latte_ref.layers.torch import LatteAttention

    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=True)
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(torch.randn(2, 1, D_MODEL), mask=torch.ones(2, 2, dtype=torch.bool), return_state=True)


def test_torch_layer_refuses_another_dtype_in_one_line():
    torch = pytest.importorskip("torch")
    from latte_ref.layers.torch import LatteAttention

    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=True)
    x = torch.randn(1, 4, D_MODEL, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the layer's weights are torch.float32.*double"):
        layer(x)
    assert layer.double()(x).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the products: no refusal
        LatteAttention(D_MODEL, N_LATENTS, N_HEADS)(torch.randn(1, 4, D_MODEL, dtype=torch.bfloat16))


@pytest.fixture
def nnx():
    pytest.importorskip("flax")
    from flax import nnx

    return nnx


@pytest.mark.parametrize("with_mask", [False, True])
def test_flax_layer_decodes_token_by_token_as_one_call(nnx, with_mask):
    import jax
    import jax.numpy as jnp

    from latte_ref.layers.flax import LatteAttention

    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    tol = 1e-12 if dtype == jnp.float64 else 1e-5
    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=True, rngs=nnx.Rngs(0), dtype=dtype)
    x = jnp.asarray(_x(), dtype=dtype)
    mask = jnp.asarray(_mask()) if with_mask else None
    whole, final = layer(x, mask=mask, return_state=True)
    decode = nnx.jit(lambda m, x_t, m_t, s: m(x_t, mask=m_t, state=s, return_state=True))
    for run in (layer, decode):
        state, outputs = None, []
        for t in range(T):
            m_t = None if mask is None else mask[:, t : t + 1]
            if run is layer:
                y_t, state = layer(x[:, t : t + 1], mask=m_t, state=state, return_state=True)
            else:
                y_t, state = decode(layer, x[:, t : t + 1], m_t, state)
            outputs.append(y_t)
        np.testing.assert_allclose(np.asarray(jnp.concatenate(outputs, 1)), np.asarray(whole), rtol=tol, atol=tol)
        for a, b in zip(state, final, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_flax_layer_refuses_a_wider_input_and_promotes_a_narrower_one(nnx):
    import jax
    import jax.numpy as jnp

    from latte_ref.layers.flax import LatteAttention

    if not jax.config.jax_enable_x64:
        pytest.skip("float64 needs JAX's x64 mode")
    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=True, rngs=nnx.Rngs(0), dtype=jnp.float32)
    with pytest.raises(TypeError, match="x has dtype float64 but the layer's weights are float32"):
        layer(jnp.ones((1, 3, D_MODEL), dtype=jnp.float64))
    assert layer(jnp.ones((1, 3, D_MODEL), dtype=jnp.bfloat16)).dtype == jnp.float32
