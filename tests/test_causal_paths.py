"""The two paths of the chunkwise causal form: factored chunks, and the per-token form beyond the bound.

Each test forces a path (a bound of -inf sends every token to the per-token form)
or builds logits that cross the bound, and compares with the definition.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.inputs import random_qkv
from latte_ref.testing.matrix import Case
from latte_ref.testing.tolerance import TOLERANCES, relative_error

causal_module = importlib.import_module("latte_ref.causal")
# Where causal_block looks up factoring_bound and causal_chunk: the module to patch them in.
block_module = importlib.import_module("latte_ref.causal.block")


def _patch_block(monkeypatch: pytest.MonkeyPatch, name: str, replacement: Any) -> None:
    """Replace ``name`` where the causal form looks it up (a patch anywhere else would have no effect)."""
    looks_up = block_module.causal_block
    assert looks_up.__globals__ is vars(block_module) and name in looks_up.__code__.co_names, name
    monkeypatch.setattr(block_module, name, replacement)


@pytest.fixture
def per_token_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk, every token by the per-token form."""
    _patch_block(monkeypatch, "factoring_bound", lambda xp, dtype, chunk_size: -np.inf)


@pytest.fixture
def per_token_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many chunks each call of the per-token form received."""
    calls: list[int] = []
    original = block_module.causal_chunk

    def counting(xp: Any, q: Any, k: Any, v: Any, state: Any, **options: Any) -> Any:
        calls.append(q.shape[-4] if q.ndim >= 4 else 1)
        return original(xp, q, k, v, state, **options)

    _patch_block(monkeypatch, "causal_chunk", counting)
    return calls


def _jumping_logits(rng: np.random.Generator, n_tokens: int) -> np.ndarray:
    """Keys that jump by 100 to 400 inside chunks, then slide down by hundreds over the sequence. (T, H=2, L=3)."""
    k = rng.normal(size=(n_tokens, 2, 3))
    for start in rng.choice(n_tokens, size=6, replace=False):
        k[start:, rng.integers(2), rng.integers(3)] += rng.uniform(100, 400)
    return k - np.linspace(0, 900, n_tokens)[:, None, None]


def test_factored_path_alone_on_bounded_logits(per_token_calls: list[int], rng: np.random.Generator) -> None:
    q, k, v = random_qkv(rng, (2,), 200, 2, 3, 4, scale=3.0)
    for chunk_size in (1, 7, 64):
        y = latte_ref.causal(q, k, v, chunk_size=chunk_size)
        assert relative_error(y, latte_ref.definition(q, k, v, causal=True)) <= 1e-13
    assert per_token_calls == []  # no chunk needed the per-token form


def test_per_token_path_alone_equals_the_definition(case: Case, rng: np.random.Generator, per_token_only: None) -> None:
    q, k, v = random_qkv(rng, (2,), 37, 2, 3, 4, scale=3.0)
    mask = np.arange(37)[None, :] < np.array([[37], [20]])
    mask[0, :4] = False  # left padding too
    y = latte_ref.causal(*(case.array(a) for a in (q, k, v)), mask=case.array(mask), chunk_size=8)
    expected = latte_ref.definition(*(case.numpy(case.array(a)) for a in (q, k, v)), causal=True, mask=mask)
    assert relative_error(case.numpy(y), expected) <= case.tol


def test_both_paths_agree_with_each_other(case: Case, rng: np.random.Generator, monkeypatch: Any) -> None:
    q, k, v = (case.array(a) for a in random_qkv(rng, (2,), 45, 2, 3, 4, scale=3.0))
    factored, state = latte_ref.causal(q, k, v, chunk_size=8, return_state=True)
    _patch_block(monkeypatch, "factoring_bound", lambda xp, dtype, chunk_size: -np.inf)
    per_token, state_per_token = latte_ref.causal(q, k, v, chunk_size=8, return_state=True)
    assert relative_error(case.numpy(factored), case.numpy(per_token)) <= case.tol
    for a, b in zip(state, state_per_token, strict=True):
        assert relative_error(case.numpy(a), case.numpy(b)) <= case.tol


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("chunk_size", [5, 16, 64])
def test_jumping_and_sliding_logits(
    dtype: str, chunk_size: int, rng: np.random.Generator, per_token_calls: list[int]
) -> None:
    n_tokens = 300
    k = _jumping_logits(rng, n_tokens)
    q, v = rng.normal(size=(n_tokens, 2, 3)) * 3, rng.normal(size=(n_tokens, 2, 4))
    expected = latte_ref.definition(q, k, v, causal=True)
    y, state = latte_ref.causal(*(a.astype(dtype) for a in (q, k, v)), chunk_size=chunk_size, return_state=True)
    assert np.all(np.isfinite(y))
    assert relative_error(y, expected) <= TOLERANCES[dtype][1]
    _, exact_state = latte_ref.recurrent(q, k, v, return_state=True)
    for a, b in zip(state, exact_state, strict=True):
        assert relative_error(np.asarray(a, dtype=np.float64), b) <= TOLERANCES[dtype][1]
    n_chunks = -(-n_tokens // chunk_size)
    # In float32 (bound 31.5 at C = 64) only the chunks with a jump take the per-token form; float64's is 332.
    assert sum(per_token_calls) < n_chunks and (dtype == "float64" or sum(per_token_calls) > 0)


def test_a_jump_inside_a_chunk_leaves_the_earlier_tokens_factored_and_causal(rng: np.random.Generator) -> None:
    """Tokens before the jump are identical, bit for bit, to a run where the jump never comes."""
    q, k, v = random_qkv(rng, (), 64, 2, 3, 4)
    jumped = k.copy()
    jumped[40:, 1, 2] += 300.0
    y_plain, y_jump = (latte_ref.causal(q, keys, v, chunk_size=64) for keys in (k, jumped))
    np.testing.assert_array_equal(y_plain[:40], y_jump[:40])
    assert relative_error(y_jump, latte_ref.definition(q, jumped, v, causal=True)) <= 1e-13


def test_the_bound_of_each_dtype_and_chunk_size() -> None:
    """The backward's bound, (-ln tiny + ln eps) / 2 - ln C, is below the forward's in both dtypes."""
    xp = latte_ref.backends.get_backend("numpy").namespace()
    assert 31.5 < causal_module.factoring_bound(xp, xp.float32, 64) < 31.6
    assert 29.4 < causal_module.factoring_bound(xp, xp.float32, 512) < 29.5
    assert 35.6 < causal_module.factoring_bound(xp, xp.float32, 1) < 35.8
    assert 331.9 < causal_module.factoring_bound(xp, xp.float64, 64) < 332.1
    assert causal_module.factoring_bound(xp, xp.float64) == causal_module.factoring_bound(xp, xp.float64, 64)


@pytest.mark.parametrize("segmented", [False, True], ids=["unpacked", "packed"])
def test_loop_and_doubling_scans_agree(rng: np.random.Generator, segmented: bool) -> None:
    xp = latte_ref.backends.get_backend("numpy").namespace()
    n, batch = 13, (2,)
    decay = rng.uniform(0, 1, size=(*batch, n, 2, 3))
    decay[..., 4, :, :] = 0.0  # a history forgotten entirely
    a_local, s_local = rng.uniform(0, 2, size=(*batch, n, 2, 3)), rng.normal(size=(*batch, n, 2, 3, 4))
    state = latte_ref.LatteState(
        np.zeros((*batch, 2, 3)), rng.uniform(1, 2, (*batch, 2, 3)), rng.normal(size=(*batch, 2, 3, 4))
    )
    restarts = None
    if segmented:  # segments start in chunks 0, 5 and 6; chunk 8's history holds a nan that must stay there
        restarts = np.zeros((*batch, n, 1, 1), dtype=bool)
        restarts[:, [0, 5, 6]] = True
        s_local[:, 7, 0, 0, 0] = np.nan
        restarts[:, 9] = True
    loop = causal_module._loop_scan(xp, decay, restarts, a_local, s_local, state)
    doubling = causal_module._doubling_scan(xp, decay, restarts, a_local, s_local, state)
    for a, b in zip(loop, doubling, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        finite = ~np.isnan(a)
        assert relative_error(b[finite], a[finite]) <= 1e-14
    if segmented:
        assert np.isnan(loop[1][:, 8, 0, 0, 0]).all() and not np.isnan(loop[1][:, 10:]).any()


def test_gradients_through_both_paths() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    q, v = rng.normal(size=(30, 2, 3)), rng.normal(size=(30, 2, 4))
    k = rng.normal(size=(30, 2, 3))
    k[17:, 0, 1] += 120.0  # a jump inside the chunk 16..23: its later tokens take the per-token form
    inputs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: latte_ref.causal(q, k, v, chunk_size=8), inputs)
