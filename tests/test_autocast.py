"""Latte under PyTorch's automatic mixed precision (``torch.autocast`` on the CPU, float16 and bfloat16).

Autocast runs matrix products in 16 bits whatever the dtype of their inputs. The forms choose their
own computation dtype (float32 for 16-bit inputs), so every form, and the torch layer around them,
must stay finite under autocast and agree with the float32 run outside it: exactly for the forms on
float32 inputs (whose products autocast must not touch), to 16-bit rounding for the layer, whose own
projections autocast does run in 16 bits. A backward pass under autocast stays finite too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import latte_ref

torch = pytest.importorskip("torch")

AUTOCAST_DTYPES = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]
TOL = 1e-2  # relative max-abs, for outputs that went through 16-bit products


def _relative(y: Any, y_ref: Any) -> float:
    """max |y - y_ref| / max |y_ref|, in float64."""
    y, y_ref = y.detach().double(), y_ref.detach().double()
    return float((y - y_ref).abs().max() / y_ref.abs().max())


def _autocast(dtype: Any) -> Any:
    return torch.autocast("cpu", dtype=dtype)


def _inputs(seed: int = 0, n_tokens: int = 24) -> tuple[Any, Any, Any]:
    """q, k (2, T, 2, 3) with logits of a few units, one key of 12; v (2, T, 2, 4)."""
    g = torch.Generator().manual_seed(seed)
    q = 3 * torch.randn(2, n_tokens, 2, 3, generator=g)
    k = 3 * torch.randn(2, n_tokens, 2, 3, generator=g)
    k[:, 5, 0, 0] = 12.0
    v = torch.randn(2, n_tokens, 2, 4, generator=g)
    return q, k, v


PACKING = torch.as_tensor(np.repeat([[0] * 7 + [1] * 10 + [2] * 7], 2, axis=0))


def _step_by_step(q: Any, k: Any, v: Any) -> Any:
    """latte_ref.step over the tokens, one at a time."""
    state, ys = None, []
    for t in range(q.shape[-3]):
        y, state = latte_ref.step(q[..., t, :, :], k[..., t, :, :], v[..., t, :, :], state)
        ys.append(y)
    return torch.stack(ys, dim=-3)


FORMS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "causal-C1": lambda q, k, v: latte_ref.causal(q, k, v, chunk_size=1),
    "causal-C64": lambda q, k, v: latte_ref.causal(q, k, v, chunk_size=64),
    "causal-C8-packed": lambda q, k, v: latte_ref.causal(q, k, v, chunk_size=8, segment_ids=PACKING),
    "recurrent": lambda q, k, v: latte_ref.recurrent(q, k, v),
    "step": _step_by_step,
    "bidirectional": lambda q, k, v: latte_ref.bidirectional(q, k, v),
    "bidirectional-packed": lambda q, k, v: latte_ref.bidirectional(q, k, v, segment_ids=PACKING),
    "definition-causal": lambda q, k, v: latte_ref.definition(q, k, v, causal=True),
    "definition-bidirectional": lambda q, k, v: latte_ref.definition(q, k, v, causal=False),
}


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_under_autocast_is_finite_and_agrees_with_float32(dtype, form):
    q, k, v = _inputs()
    expected = FORMS[form](q, k, v)
    with _autocast(dtype):
        y = FORMS[form](q, k, v)
    assert y.dtype == torch.float32 and y.shape == expected.shape
    assert torch.isfinite(y).all(), f"{form} under autocast: {int((~torch.isfinite(y)).sum())} non-finite outputs"
    assert _relative(y, expected) <= TOL


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_the_example_of_a_key_of_12_gives_ones_under_autocast(dtype, chunk_size):
    """All values 1: every output is 1, however the keys weigh them (it was nan under float16 autocast)."""
    q, k, v = torch.zeros(8, 1, 2), torch.zeros(8, 1, 2), torch.ones(8, 1, 2)
    k[3, 0, 0] = 12.0
    with _autocast(dtype):
        outputs = {
            "causal": latte_ref.causal(q, k, v, chunk_size=chunk_size),
            "bidirectional-packed": latte_ref.bidirectional(q, k, v, segment_ids=torch.tensor([0] * 5 + [1] * 3)),
        }
    for name, y in outputs.items():
        torch.testing.assert_close(y, torch.ones_like(y), rtol=1e-6, atol=1e-6, msg=name)


def _layer(causal: bool) -> Any:
    from latte_ref.layers.torch import LatteAttention

    torch.manual_seed(0)
    return LatteAttention(16, 8, 2, causal=causal)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_torch_layer_under_autocast_is_finite_and_agrees_with_float32(dtype, causal):
    """x ~ 4 randn: the 16-bit projections give logits of tens, and one key of 12 above the others is common."""
    layer = _layer(causal)
    x = 4 * torch.randn(2, 40, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.as_tensor(np.repeat([[0] * 15 + [1] * 25], 2, axis=0))
    for options in ({}, {"segment_ids": ids}):
        expected = layer(x, **options)
        with _autocast(dtype):
            y = layer(x, **options)
        assert torch.isfinite(y).all(), f"{list(options)}: non-finite outputs under autocast"
        assert _relative(y, expected) <= 3 * TOL, f"{list(options)}: {_relative(y, expected):.2e}"


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_a_backward_pass_under_autocast_is_finite(dtype, causal):
    layer = _layer(causal)
    x = (4 * torch.randn(2, 40, 16, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    with _autocast(dtype):
        loss = layer(x).float().pow(2).mean()
    loss.backward()
    for name, g in [("x", x.grad), *((name, p.grad) for name, p in layer.named_parameters())]:
        assert g is not None and torch.isfinite(g).all(), f"d/d{name} is not finite"
    q, k, v = (a.requires_grad_(True) for a in _inputs(3))
    with _autocast(dtype):
        y = latte_ref.causal(q, k, v, chunk_size=8) if causal else latte_ref.bidirectional(q, k, v)
    y.sum().backward()
    for name, a in zip("qkv", (q, k, v)):
        assert torch.isfinite(a.grad).all(), f"d/d{name} of the form is not finite"
