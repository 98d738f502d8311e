"""Cross-attention (queries of one sequence, keys and values of another) agrees with the definition on every backend."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.tolerance import relative_error

B, TQ, TK, H, L, D = 2, 5, 11, 2, 3, 4


def _inputs(n_queries: int = TQ, n_keys: int = TK, seed: int = 3):
    rng = np.random.default_rng(seed)
    q = rng.normal(scale=2.0, size=(B, n_queries, H, L))
    k = rng.normal(scale=2.0, size=(B, n_keys, H, L))
    v = rng.normal(size=(B, n_keys, H, D))
    key_mask = np.ones((B, n_keys), dtype=bool)
    key_mask[1, n_keys // 2 :] = False  # the second sequence's keys end early
    key_mask[0, :1] = False
    return q, k, v, key_mask


@pytest.mark.parametrize("with_key_mask", [False, True], ids=["all-keys", "key-mask"])
@pytest.mark.parametrize("n_queries", [TQ, 1, 2 * TK])
def test_bidirectional_cross_attention_is_the_definition(case, n_queries, with_key_mask):
    q, k, v, key_mask = _inputs(n_queries)
    key_mask = case.array(key_mask) if with_key_mask else None
    q, k, v = (case.array(a) for a in (q, k, v))
    y = latte_ref.bidirectional(q, k, v, key_mask=key_mask)
    expected = latte_ref.definition(q, k, v, causal=False, key_mask=key_mask)
    assert tuple(y.shape) == (B, n_queries, H, D)
    assert relative_error(case.numpy(y), case.numpy(expected)) <= case.tol


def test_key_mask_equals_leaving_the_keys_out(case64):
    q, k, v, _ = _inputs()
    keep = np.tile(np.arange(TK) < 7, (B, 1))
    q, k, v = (case64.array(a) for a in (q, k, v))
    full = latte_ref.bidirectional(q, k, v, key_mask=case64.array(keep))
    short = latte_ref.bidirectional(q, k[:, :7, ...], v[:, :7, ...])
    assert relative_error(case64.numpy(full), case64.numpy(short)) <= case64.tol


def test_attention_matrix_of_cross_attention(case64):
    q, k, _, key_mask = _inputs()
    a = case64.numpy(
        latte_ref.attention_matrix(case64.array(q), case64.array(k), causal=False, key_mask=case64.array(key_mask))
    )
    assert a.shape == (B, H, TQ, TK)
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-12)
    assert np.all(a[..., ~key_mask[0]][0] == 0) and np.all(a[1][..., ~key_mask[1]] == 0)


def test_mask_and_key_mask_together(case64):
    """mask keeps its meaning (Tq = Tk): padded tokens are no key and get 0; key_mask leaves out more keys."""
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(3, B, 9, H, L))[0], rng.normal(size=(B, 9, H, L)), rng.normal(size=(B, 9, H, D))
    mask, key_mask = rng.random((B, 9)) < 0.8, rng.random((B, 9)) < 0.7
    args = [case64.array(a) for a in (q, k, v)]
    y = latte_ref.bidirectional(*args, mask=case64.array(mask), key_mask=case64.array(key_mask))
    expected = latte_ref.definition(*args, causal=False, mask=case64.array(mask), key_mask=case64.array(key_mask))
    assert relative_error(case64.numpy(y), case64.numpy(expected)) <= case64.tol
    np.testing.assert_array_equal(case64.numpy(y)[~mask], 0.0)


def test_cross_attention_errors():
    q, k, v, key_mask = _inputs()
    with pytest.raises(ValueError, match="key_mask"):
        latte_ref.bidirectional(q, k, v, mask=np.ones((B, TQ), dtype=bool))
    with pytest.raises(ValueError, match="one length"):
        latte_ref.definition(q, k, v, causal=True)
    with pytest.raises(ValueError, match="key_mask"):
        latte_ref.bidirectional(q, k, v, key_mask=key_mask[:, :-1])
    with pytest.raises(ValueError, match="v must share"):
        latte_ref.bidirectional(q, k, v[:, :-1])


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_cross_attention_gradients_are_the_definitions(framework):
    q, k, v, key_mask = _inputs()
    weights = np.random.default_rng(9).normal(size=(B, TQ, H, D))

    def grads(form):
        if framework == "torch":
            torch = pytest.importorskip("torch")
            qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
            (form(*qkv, torch.tensor(key_mask)) * torch.tensor(weights)).sum().backward()
            return [a.grad.numpy() for a in qkv]
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        loss = lambda q, k, v: (form(q, k, v, jax.numpy.asarray(key_mask)) * weights).sum()  # noqa: E731
        return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2))(*(jax.numpy.asarray(a) for a in (q, k, v)))]

    fast = grads(lambda q, k, v, m: latte_ref.bidirectional(q, k, v, key_mask=m))
    oracle = grads(lambda q, k, v, m: latte_ref.definition(q, k, v, causal=False, key_mask=m))
    for a, b in zip(fast, oracle):
        assert relative_error(a, b) <= 1e-12


def test_latte_attention_with_a_context(case64):
    rng = np.random.default_rng(4)
    p = latte_ref.init_params(16, 8, 4, xp=case64.xp, dtype=case64.dtype, device=case64.device)
    x, context = case64.array(rng.normal(size=(B, 6, 16))), case64.array(rng.normal(size=(B, 13, 16)))
    context_mask = case64.array(rng.random((B, 13)) < 0.7)
    y = latte_ref.latte_attention(x, p, causal=False, context=context, context_mask=context_mask)
    expected = latte_ref.latte_attention(
        x, p, causal=False, context=context, context_mask=context_mask, form="definition"
    )
    assert tuple(y.shape) == (B, 6, 16)
    assert relative_error(case64.numpy(y), case64.numpy(expected)) <= case64.tol


@pytest.mark.parametrize(("n_queries", "n_keys"), [(TQ, TK), (2 * TK, TK), (TQ, 0)])
def test_cross_attention_in_blocks(case64, monkeypatch, n_queries, n_keys):
    """Keys summarised and queries read BLOCK_TOKENS at a time (here 4) give the definition's output."""
    monkeypatch.setattr(sys.modules["latte_ref.bidirectional"], "BLOCK_TOKENS", 4)
    q, k, v, key_mask = _inputs(n_queries, n_keys)
    q, k, v, key_mask = (case64.array(a) for a in (q, k, v, key_mask))
    y = latte_ref.bidirectional(q, k, v, key_mask=key_mask)
    expected = latte_ref.definition(q, k, v, causal=False, key_mask=key_mask)
    assert tuple(y.shape) == (B, n_queries, H, D)
    assert relative_error(case64.numpy(y), case64.numpy(expected)) <= case64.tol
