"""The forms and the causal torch layer under ``torch.compile(fullgraph=True)``: one graph, the results of eager.

``fullgraph=True`` raises on any graph break. Compiling is slow, so the inputs are small:
the causal form on 40 tokens in chunks of 16 (two whole chunks and a short one), the
recurrence (a Python loop over the tokens, unrolled) on 6.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import latte_ref

torch = pytest.importorskip("torch")


def _leaves(out: Any) -> list[Any]:
    return [out] if isinstance(out, torch.Tensor) else [x for a in out for x in _leaves(a)]


def _inputs(n_tokens: int, *, jumps: bool = False) -> tuple[Any, ...]:
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(2, n_tokens, 2, size)) for size in (3, 3, 4))
    if jumps:  # keys jumping by 100 to 400 inside chunks: those chunks take the per-token form
        for start in rng.choice(n_tokens, size=4, replace=False):
            k[:, start:, rng.integers(2), rng.integers(3)] += rng.uniform(100, 400)
        k -= np.linspace(0, 900, n_tokens)[:, None, None]
    mask = np.ones((2, n_tokens), dtype=bool)
    mask[1, -n_tokens // 4 :] = False
    ids = np.repeat((np.arange(n_tokens) * 3 // n_tokens)[None], 2, axis=0)  # three documents a row
    history = rng.normal(size=(2, 5, 2, 3)), rng.normal(size=(2, 5, 2, 3)), rng.normal(size=(2, 5, 2, 4))
    state = latte_ref.causal(*(torch.tensor(a) for a in history), return_state=True)[1]
    return (*(torch.tensor(a) for a in (q, k, v, mask, ids)), state)


def _compiled_equals_eager(
    call: Callable[..., Any], q: Any, k: Any, v: Any, *, grad: bool = True, dynamic: bool | None = None
) -> None:
    torch._dynamo.reset()
    compiled_args = [a.clone().requires_grad_(grad) for a in (q, k, v)]
    eager_args = [a.clone().requires_grad_(grad) for a in (q, k, v)]
    compiled = _leaves(torch.compile(call, fullgraph=True, dynamic=dynamic)(*compiled_args))
    eager = _leaves(call(*eager_args))
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if grad:
        weights = [torch.randn_like(y) for y in eager]
        for outputs in (compiled, eager):
            sum((y * w).sum() for y, w in zip(outputs, weights)).backward()
        for a, b in zip(compiled_args, eager_args):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


CAUSAL = {
    "plain": lambda q, k, v, m, ids, s: latte_ref.causal(q, k, v, chunk_size=16),
    "mask_state": lambda q, k, v, m, ids, s: latte_ref.causal(
        q, k, v, mask=m, state=s, chunk_size=16, return_state=True
    ),
    "segments": lambda q, k, v, m, ids, s: latte_ref.causal(
        q, k, v, mask=m, segment_ids=ids, state=s, chunk_size=16, return_state=True
    ),
}


@pytest.mark.slow  # 2 to 5 minutes each on 2 shared cores (forward and backward graphs, two conds)
@pytest.mark.parametrize("jumps", [False, True], ids=["bounded", "jumps"])
@pytest.mark.parametrize("name", ["plain", "segments"])
def test_causal_compiles_to_one_graph(name: str, jumps: bool) -> None:
    q, k, v, mask, ids, state = _inputs(40, jumps=jumps)
    _compiled_equals_eager(lambda q, k, v: CAUSAL[name](q, k, v, mask, ids, state), q, k, v)


@pytest.mark.slow
def test_causal_compiles_with_symbolic_shapes() -> None:
    # torch.cond compares its branches' output strides, which for a symbolic number of chunks are
    # expressions it cannot match unless the adapter passes flat arrays through it.
    q, k, v, mask, ids, state = _inputs(40, jumps=True)
    _compiled_equals_eager(lambda q, k, v: CAUSAL["plain"](q, k, v, mask, ids, state), q, k, v, dynamic=True)


@pytest.mark.slow
@pytest.mark.parametrize("jumps", [False, True], ids=["bounded", "jumps"])
def test_causal_with_mask_and_state_compiles(jumps: bool) -> None:
    q, k, v, mask, ids, state = _inputs(40, jumps=jumps)
    _compiled_equals_eager(lambda q, k, v: CAUSAL["mask_state"](q, k, v, mask, ids, state), q, k, v)


OTHERS = {
    "recurrent": lambda q, k, v, m, ids, s: latte_ref.recurrent(
        q, k, v, mask=m, segment_ids=ids, state=s, return_state=True
    ),
    "step": lambda q, k, v, m, ids, s: latte_ref.step(q[:, 0], k[:, 0], v[:, 0], s, mask_t=m[:, -1]),
    "bidirectional": lambda q, k, v, m, ids, s: latte_ref.bidirectional(q, k, v, mask=m, segment_ids=ids),
}


@pytest.mark.parametrize("name", ["recurrent", "step", pytest.param("bidirectional", marks=pytest.mark.slow)])
def test_other_forms_compile_to_one_graph(name: str) -> None:
    q, k, v, mask, ids, state = _inputs(6)
    _compiled_equals_eager(lambda q, k, v: OTHERS[name](q, k, v, mask, ids, state), q, k, v, grad=False)


@pytest.mark.slow
def test_causal_layer_training_step_compiles() -> None:
    from latte_ref.layers.torch import LatteAttention

    torch.manual_seed(0)
    layer = LatteAttention(16, 8, 2, causal=True, dtype=torch.float64)
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    x[:, 20] *= 300.0  # one token's keys far above the rest: its chunk takes the per-token form

    def loss(x: Any) -> Any:
        y = layer(x)
        return (y * y).mean()

    layer.to_params()  # a first LatteParams made eagerly: where JAX is imported, it registers them as a pytree
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)(x)
    compiled.backward()
    compiled_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    eager = loss(x)
    eager.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-14)
    for a, p in zip(compiled_grads, layer.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)
