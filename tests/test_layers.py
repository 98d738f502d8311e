"""The framework layers (latte_ref.layers.torch, latte_ref.layers.flax) and LatteParams as a JAX pytree."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.tolerance import relative_error

B, T, D_MODEL, N_LATENTS, N_HEADS = 2, 12, 16, 8, 4


def _x(seed: int = 0, length: int = T) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(B, length, D_MODEL))


def _mask() -> np.ndarray:
    mask = np.ones((B, T), dtype=bool)
    mask[1, 8:] = False
    return mask


# -- PyTorch ------------------------------------------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
def test_torch_layer_is_latte_attention_and_trains(torch, dtype, causal, with_mask):
    from latte_ref.layers.torch import LatteAttention

    torch.manual_seed(0)
    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=causal, dtype=getattr(torch, dtype))
    assert all(isinstance(p, torch.nn.Parameter) for p in (layer.wq, layer.wk, layer.wv, layer.wo))
    x = torch.tensor(_x(), dtype=getattr(torch, dtype))
    mask = torch.tensor(_mask()) if with_mask else None
    y = layer(x, mask=mask)
    expected = latte_ref.latte_attention(x, layer.to_params(), causal=causal, mask=mask)
    assert relative_error(y.detach().numpy(), expected.detach().numpy()) == 0.0
    oracle = latte_ref.latte_attention(
        x.double(),
        latte_ref.LatteParams.from_authors(
            {"Wq": layer.wq.double(), "Wk": layer.wk.double(), "Wv": layer.wv.double(), "o_proj": layer.wo.double()},
            n_heads=N_HEADS,
        ),
        causal=causal,
        mask=mask,
        form="definition",
    )
    assert relative_error(y.detach().double().numpy(), oracle.detach().numpy()) <= (
        1e-5 if dtype == "float32" else 1e-12
    )
    (y * torch.tensor(_x(1), dtype=y.dtype)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and bool(torch.all(torch.isfinite(p.grad))) and float(p.grad.abs().sum()) > 0, name


def test_torch_layer_streams_with_a_state(torch):
    from latte_ref.layers.torch import LatteAttention

    layer = LatteAttention.from_params(latte_ref.init_params(D_MODEL, N_LATENTS, N_HEADS), causal=True)
    x = torch.tensor(_x())
    head, state = layer(x[:, :5], return_state=True)
    tail = layer(x[:, 5:], state=state)
    assert relative_error(torch.cat([head, tail], 1).detach().numpy(), layer(x).detach().numpy()) <= 1e-12
    with pytest.raises(ValueError, match="causal=True"):
        LatteAttention(D_MODEL, N_LATENTS, N_HEADS)(x.float(), return_state=True)


def test_torch_layer_params_round_trip_and_repr(torch):
    from latte_ref.layers.torch import LatteAttention

    params = latte_ref.init_params(D_MODEL, N_LATENTS, N_HEADS, seed=3)
    layer = LatteAttention.from_params(params)
    back = layer.to_params()
    for name in ("wq", "wk", "wv", "wo"):
        np.testing.assert_array_equal(getattr(back, name).detach().numpy(), getattr(params, name))
    assert back.n_heads == N_HEADS and layer.wq.dtype == torch.float64
    assert str(layer) == "LatteAttention(d_model=16, n_latents=8, n_heads=4, causal=False)"
    assert len(repr(back).splitlines()) == 1 and "(16, 8)" in repr(back) and "float64" in repr(back)


def test_torch_layer_cross_attention(torch):
    from latte_ref.layers.torch import LatteAttention

    layer = LatteAttention.from_params(latte_ref.init_params(D_MODEL, N_LATENTS, N_HEADS))
    x, context = torch.tensor(_x()), torch.tensor(_x(2, length=20), requires_grad=True)
    context_mask = torch.tensor(np.random.default_rng(3).random((B, 20)) < 0.7)
    y = layer(x, context=context, context_mask=context_mask)
    expected = latte_ref.latte_attention(
        x, layer.to_params(), causal=False, context=context, context_mask=context_mask, form="definition"
    )
    assert tuple(y.shape) == (B, T, D_MODEL)
    assert relative_error(y.detach().numpy(), expected.detach().numpy()) <= 1e-12
    y.sum().backward()
    assert float(context.grad[~context_mask].abs().max()) == 0.0  # a left-out context token is read by no query
    with pytest.raises(ValueError, match="causal=False"):
        LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=True)(x.float(), context=context.float())


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_torch_layer_compiles(torch, causal, capsys):
    from latte_ref.layers.torch import LatteAttention

    torch.manual_seed(0)
    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=causal)
    compiled = torch.compile(layer)
    x = torch.tensor(_x(), dtype=torch.float32)
    start = time.perf_counter()
    y = compiled(x, mask=torch.tensor(_mask()))
    with capsys.disabled():
        form = "causal" if causal else "bidirectional"
        print(f"\ntorch.compile first call ({form}): {time.perf_counter() - start:.1f} s")
    expected = layer(x, mask=torch.tensor(_mask()))
    assert relative_error(y.detach().numpy(), expected.detach().numpy()) <= 1e-5
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


# -- Flax NNX -----------------------------------------------------------------------------------------------------


@pytest.fixture
def nnx():
    pytest.importorskip("jax")
    return pytest.importorskip("flax.nnx")


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_flax_layer_is_latte_attention_grads_and_jit(nnx, causal):
    import jax.numpy as jnp

    from latte_ref.layers.flax import LatteAttention

    layer = LatteAttention(D_MODEL, N_LATENTS, N_HEADS, causal=causal, rngs=nnx.Rngs(0), dtype=jnp.float64)
    x, mask = jnp.asarray(_x()), jnp.asarray(_mask())
    y = layer(x, mask=mask)
    expected = latte_ref.latte_attention(x, layer.to_params(), causal=causal, mask=mask, form="definition")
    assert relative_error(np.asarray(y), np.asarray(expected)) <= 1e-12
    jitted = nnx.jit(lambda m, x, mask: m(x, mask=mask))(layer, x, mask)
    assert relative_error(np.asarray(jitted), np.asarray(y)) <= 1e-12
    weights = jnp.asarray(_x(1))
    grads = nnx.grad(lambda m: (m(x, mask=mask) * weights).sum())(layer)
    for name in ("wq", "wk", "wv", "wo"):
        g = np.asarray(grads[name][...])
        assert g.shape == getattr(layer, name)[...].shape and np.all(np.isfinite(g)) and np.abs(g).sum() > 0, name


def test_flax_layer_streams_round_trips_and_cross_attends(nnx):
    import jax.numpy as jnp

    from latte_ref.layers.flax import LatteAttention

    params = latte_ref.init_params(D_MODEL, N_LATENTS, N_HEADS, seed=5)
    layer = LatteAttention.from_params(params, causal=True)
    for name in ("wq", "wk", "wv", "wo"):
        np.testing.assert_array_equal(np.asarray(getattr(layer.to_params(), name)), getattr(params, name))
    assert repr(layer) == str(layer) == "LatteAttention(d_model=16, n_latents=8, n_heads=4, causal=True)"
    x = jnp.asarray(_x())
    head, state = layer(x[:, :7], return_state=True)
    tail = layer(x[:, 7:], state=state)
    assert relative_error(np.asarray(jnp.concatenate([head, tail], 1)), np.asarray(layer(x))) <= 1e-12

    encoder = LatteAttention.from_params(params)
    context = jnp.asarray(_x(2, length=20))
    y = encoder(x, context=context)
    expected = latte_ref.latte_attention(
        np.asarray(x), params, causal=False, context=np.asarray(context), form="definition"
    )
    assert relative_error(np.asarray(y), expected) <= 1e-12


# -- LatteParams as a JAX pytree ----------------------------------------------------------------------------------


def test_params_are_a_jax_pytree():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    params = latte_ref.init_params(D_MODEL, N_LATENTS, N_HEADS, xp=jnp, dtype=jnp.float64)
    leaves, treedef = jax.tree.flatten(params)
    assert len(leaves) == 4 and jax.tree.unflatten(treedef, leaves).n_heads == N_HEADS
    doubled = jax.tree.map(lambda w: 2 * w, params)
    assert isinstance(doubled, latte_ref.LatteParams) and bool(jnp.all(doubled.wq == 2 * params.wq))
    x = jnp.asarray(_x())
    loss = jax.jit(lambda p, x: latte_ref.latte_attention(x, p, causal=True).sum())
    grads = jax.grad(loss)(params, x)
    assert isinstance(grads, latte_ref.LatteParams) and grads.wo.shape == (D_MODEL, D_MODEL)
    assert "Array(" not in repr(grads)


def test_pytree_registration_imports_no_framework_and_happens_when_jax_arrives(tmp_path):
    pytest.importorskip("jax")
    code = (
        "import sys, latte_ref, latte_ref.layers\n"
        "assert not {'jax', 'torch', 'flax'} & set(sys.modules), sorted({'jax', 'torch', 'flax'} & set(sys.modules))\n"
        "import jax, jax.numpy as jnp\n"
        "p = latte_ref.init_params(8, 4, 2, xp=jnp)\n"
        "print(len(jax.tree.leaves(p)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
