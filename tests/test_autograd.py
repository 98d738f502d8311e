"""Gradients through every form agree with the definition's, in torch autograd and jax.grad (float64)."""

from __future__ import annotations

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.inputs import random_qkv

FORMS = {
    "causal": lambda q, k, v, mask: latte_ref.causal(q, k, v, mask=mask, chunk_size=3),
    "recurrent": lambda q, k, v, mask: latte_ref.recurrent(q, k, v, mask=mask),
    "causal-definition": lambda q, k, v, mask: latte_ref.definition(q, k, v, causal=True, mask=mask),
    "bidirectional": lambda q, k, v, mask: latte_ref.bidirectional(q, k, v, mask=mask),
    "bidirectional-definition": lambda q, k, v, mask: latte_ref.definition(q, k, v, causal=False, mask=mask),
}
PAIRS = [
    ("causal", "causal-definition"),
    ("recurrent", "causal-definition"),
    ("bidirectional", "bidirectional-definition"),
]


def _problem(with_mask: bool):
    rng = np.random.default_rng(7)
    q, k, v = random_qkv(rng, (2,), 8, 2, 3, 4, scale=2.0)
    weights = rng.normal(size=(2, 8, 2, 4))  # a random linear read-out makes every output matter
    mask = np.ones((2, 8), dtype=bool)
    if with_mask:
        mask[1, 5:] = False
        mask[0, 0] = False
    return q, k, v, weights, mask


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch_grads(form: str, with_mask: bool) -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    q, k, v, weights, mask = _problem(with_mask)
    qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    y = FORMS[form](*qkv, torch.tensor(mask))
    (y * torch.tensor(weights)).sum().backward()
    return [a.grad.numpy() for a in qkv]


def _jax_grads(form: str, with_mask: bool) -> list[np.ndarray]:
    jax = pytest.importorskip("jax")
    q, k, v, weights, mask = _problem(with_mask)

    def loss(q, k, v):
        return (FORMS[form](q, k, v, jax.numpy.asarray(mask)) * weights).sum()

    return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2))(*(jax.numpy.asarray(a) for a in (q, k, v)))]


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize(("form", "oracle"), PAIRS)
def test_gradients_agree_with_the_definition(framework, with_mask, form, oracle):
    grads = _torch_grads if framework == "torch" else _jax_grads
    for name, g, g_ref in zip("qkv", grads(form, with_mask), grads(oracle, with_mask)):
        assert np.all(np.isfinite(g)), f"d/d{name} is not finite"
        assert _relative(g, g_ref) <= 1e-9, f"d/d{name}: {_relative(g, g_ref):.2e}"


@pytest.mark.parametrize("form", list(FORMS))
def test_torch_gradcheck(form):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    q, k, v = (torch.tensor(a, requires_grad=True) for a in random_qkv(rng, (), 5, 2, 2, 3))
    mask = torch.tensor([True, True, False, True, True])
    assert torch.autograd.gradcheck(lambda q, k, v: FORMS[form](q, k, v, mask), (q, k, v))


def test_gradients_flow_through_a_carried_state():
    torch = pytest.importorskip("torch")
    q, k, v, weights, _ = _problem(False)
    qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    first, state = latte_ref.causal(*(a[:, :5] for a in qkv), return_state=True)
    second = latte_ref.causal(*(a[:, 5:] for a in qkv), state=state)
    (torch.cat([first, second], 1) * torch.tensor(weights)).sum().backward()
    streamed = [a.grad.numpy() for a in qkv]
    for g, g_ref in zip(streamed, _torch_grads("causal-definition", False)):
        assert _relative(g, g_ref) <= 1e-9
