"""Padding masks: padded tokens contribute nothing, their own output is 0, and they leave the state unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.inputs import random_qkv
from latte_ref.testing.tolerance import relative_error

T = 12


def _masks():
    right = np.arange(T) < 9  # padding at the end
    left = np.arange(T) >= 4  # padding at the start
    holes = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=bool)
    none = np.zeros(T, dtype=bool)
    return {"right": right, "left": left, "holes": holes, "all-padded": none}


def _forms(mask, q, k, v):
    return {
        "bidirectional": latte_ref.bidirectional(q, k, v, mask=mask),
        "causal": latte_ref.causal(q, k, v, mask=mask, chunk_size=5),
        "recurrent": latte_ref.recurrent(q, k, v, mask=mask),
    }


@pytest.mark.parametrize("kind", list(_masks()))
def test_mask_equals_dropping_the_padded_tokens(case, rng, kind):
    real = _masks()[kind]
    mask_np = np.stack([real, np.ones(T, dtype=bool)])  # batch row 1 is unpadded
    q, k, v = (case.array(a) for a in random_qkv(rng, (2,), T, 2, 3, 4))
    exact = [case.numpy(a) for a in (q, k, v)]
    mask = case.array(mask_np)
    for name, y in _forms(mask, q, k, v).items():
        y = case.numpy(y)
        assert np.all(np.isfinite(y)), name
        np.testing.assert_array_equal(y[0, ~real], 0.0)
        kept = [a[0, real] for a in exact]
        causal = name != "bidirectional"
        expected = latte_ref.definition(*kept, causal=causal) if real.any() else np.zeros((0, 2, 4))
        assert relative_error(y[0, real], expected) <= case.tol, name
        expected_full = latte_ref.definition(*(a[1] for a in exact), causal=causal)
        assert relative_error(y[1], expected_full) <= case.tol, name


def test_definition_and_attention_matrix_respect_the_mask(case, rng):
    real = _masks()["holes"]
    q, k, v = (case.array(a) for a in random_qkv(rng, (), T, 2, 3, 4))
    a = case.numpy(latte_ref.attention_matrix(q, k, causal=True, mask=case.array(real)))
    np.testing.assert_array_equal(a[:, ~real, :], 0.0)
    np.testing.assert_array_equal(a[:, :, ~real], 0.0)
    y = case.numpy(latte_ref.definition(q, k, v, causal=False, mask=case.array(real)))
    np.testing.assert_array_equal(y[~real], 0.0)


def test_padded_step_leaves_the_state_unchanged(case, rng):
    q, k, v = (case.array(a) for a in random_qkv(rng, (2,), 4, 2, 3, 4))
    _, state = latte_ref.causal(q[:, :3, ...], k[:, :3, ...], v[:, :3, ...], return_state=True)
    padded = case.array(np.array([False, False]))
    y, after = latte_ref.step(q[:, 3, ...], k[:, 3, ...], v[:, 3, ...], state, mask_t=padded)
    np.testing.assert_array_equal(case.numpy(y), 0.0)
    for before_part, after_part in zip(state, after):
        np.testing.assert_array_equal(case.numpy(before_part), case.numpy(after_part))


def test_fully_masked_sequence_gives_zeros_and_empty_state(case, rng):
    q, k, v = (case.array(a) for a in random_qkv(rng, (), 6, 2, 3, 4))
    mask = case.array(np.zeros(6, dtype=bool))
    y, state = latte_ref.causal(q, k, v, mask=mask, return_state=True)
    np.testing.assert_array_equal(case.numpy(y), 0.0)
    np.testing.assert_array_equal(case.numpy(state.running_max), -np.inf)
    np.testing.assert_array_equal(case.numpy(state.normaliser), 0.0)
    # and the next real token then sees only itself
    y_next, _ = latte_ref.step(q[0, ...], k[0, ...], v[0, ...], state)
    assert relative_error(case.numpy(y_next), case.numpy(v[0, ...])) <= case.tol


def test_empty_sequence(case, rng):
    q, k, v = (case.array(a) for a in random_qkv(rng, (2,), 0, 2, 3, 4))
    for y in (
        latte_ref.bidirectional(q, k, v),
        latte_ref.causal(q, k, v),
        latte_ref.recurrent(q, k, v),
        latte_ref.definition(q, k, v, causal=True),
    ):
        assert tuple(y.shape) == (2, 0, 2, 4)
    assert tuple(latte_ref.attention_matrix(q, k, causal=False).shape) == (2, 2, 0, 0)
