"""Every public function also runs under jax.jit, with the results of eager execution.

The public functions are tagged with array-api-extra's ``lazy_xp_function``;
``patch_lazy_xp_functions`` swaps them, on the ``latte_ref`` module, for ``jax.jit``-compiled
versions (array arguments traced, the rest static) for the length of a ``with`` block.
"""

from __future__ import annotations

import numpy as np
import pytest
from array_api_extra.testing import lazy_xp_function, patch_lazy_xp_functions

import latte_ref
from latte_ref.testing.inputs import random_qkv

jax = pytest.importorskip("jax")
jnp = jax.numpy

PUBLIC = (
    "attention_matrix",
    "bidirectional",
    "causal",
    "combine",
    "definition",
    "latte_attention",
    "recurrent",
    "step",
)
EAGER = {name: getattr(latte_ref, name) for name in PUBLIC}
for function in EAGER.values():
    lazy_xp_function(function)
lazy_xp_modules = [latte_ref]  # where patch_lazy_xp_functions looks for the tagged functions


@pytest.fixture
def inputs():
    q, k, v = random_qkv(np.random.default_rng(11), (2,), 9, 2, 3, 4)
    mask = np.ones((2, 9), dtype=bool)
    mask[1, 6:] = False
    return [jnp.asarray(a) for a in (q, k, v, mask)]


CALLS = {
    "bidirectional": lambda q, k, v, m: latte_ref.bidirectional(q, k, v, mask=m),
    "causal": lambda q, k, v, m: latte_ref.causal(q, k, v, mask=m, chunk_size=4, return_state=True),
    "recurrent": lambda q, k, v, m: latte_ref.recurrent(q, k, v, mask=m, return_state=True),
    "step": lambda q, k, v, m: latte_ref.step(q[:, 0], k[:, 0], v[:, 0], None, mask_t=m[:, 0]),
    "definition": lambda q, k, v, m: latte_ref.definition(q, k, v, causal=True, mask=m),
    "attention_matrix": lambda q, k, v, m: latte_ref.attention_matrix(q, k, causal=False, mask=m),
    "combine": lambda q, k, v, m: latte_ref.combine(
        latte_ref.causal(q[:, :4], k[:, :4], v[:, :4], return_state=True)[1],
        latte_ref.causal(q[:, 4:], k[:, 4:], v[:, 4:], return_state=True)[1],
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_jit_matches_eager(inputs, name, request):
    eager = jax.tree_util.tree_leaves(CALLS[name](*inputs))
    with patch_lazy_xp_functions(request, xp=jnp):
        assert all(getattr(latte_ref, name) is not EAGER[name] for name in PUBLIC)  # compiled for the block
        jitted = jax.tree_util.tree_leaves(CALLS[name](*inputs))
    assert len(eager) == len(jitted)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [False, True])
def test_layer_under_jit(causal, request):
    params = latte_ref.init_params(8, 6, 2, xp=jnp, dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 8)))
    eager = latte_ref.latte_attention(x, params, causal=causal)
    with patch_lazy_xp_functions(request, xp=jnp):
        jitted = latte_ref.latte_attention(x, params, causal=causal)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-12, atol=1e-14)


def test_grad_with_respect_to_one_argument(inputs):
    q, k, v, mask = inputs  # k and v stay concrete while q is traced
    grad = jax.grad(lambda q: latte_ref.causal(q, k, v, mask=mask).sum())(q)
    assert grad.shape == q.shape and bool(jnp.all(jnp.isfinite(grad)))


def test_eager_causal_runs_each_block_as_one_compiled_graph(inputs, monkeypatch):
    """Eager JAX would compile every operation of a block for every new shape; `causal` jits the block whole."""
    import latte_ref.backends.jax as jax_adapter

    from latte_ref.causal.traced import causal_block_traced

    made: dict = {}  # the jitted functions of this call only, not those other tests left behind
    monkeypatch.setattr(jax_adapter, "_ONE_GRAPH", made)
    q, k, v, mask = inputs
    y, state = latte_ref.causal(q, k, v, mask=mask, chunk_size=4, return_state=True)
    assert [key[0] for key in made] == [causal_block_traced]
    y_np, state_np = latte_ref.causal(
        *(np.asarray(a) for a in (q, k, v)), mask=np.asarray(mask), chunk_size=4, return_state=True
    )
    for a, b in zip((y, *state), (y_np, *state_np)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-14)
