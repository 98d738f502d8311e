"""Every form of Latte against the definition, on every backend, device and dtype."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.inputs import random_qkv
from latte_ref.testing.tolerance import relative_error

# (batch, T, H, L, D): T = 1, a prime T, H = 1, L = 1, D = 1, and batch dims () and (2, 3).
SHAPES = [
    ((), 1, 2, 3, 4),
    ((), 13, 1, 3, 2),
    ((), 17, 2, 1, 3),
    ((), 11, 3, 4, 1),
    ((2, 3), 7, 2, 3, 5),
    pytest.param(((2,), 37, 4, 8, 8), marks=pytest.mark.full_matrix),
]


def _inputs(case, rng, shape, scale=1.0):
    """Inputs of the case, and the float64 NumPy view of them as the case holds them (rounded)."""
    q, k, v = (case.array(a) for a in random_qkv(rng, *shape, scale=scale))
    return (q, k, v), tuple(case.numpy(a) for a in (q, k, v))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bidirectional_matches_definition(case, rng, shape):
    (q, k, v), exact = _inputs(case, rng, shape)
    y = latte_ref.bidirectional(q, k, v)
    assert y.dtype == q.dtype and tuple(y.shape) == (*shape[0], shape[1], shape[2], shape[4])
    assert relative_error(case.numpy(y), latte_ref.definition(*exact, causal=False)) <= case.tol


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_causal_and_recurrent_match_definition(case, rng, shape):
    (q, k, v), exact = _inputs(case, rng, shape)
    expected = latte_ref.definition(*exact, causal=True)
    for y in (latte_ref.causal(q, k, v), latte_ref.causal(q, k, v, chunk_size=3), latte_ref.recurrent(q, k, v)):
        assert y.dtype == q.dtype
        assert relative_error(case.numpy(y), expected) <= case.tol


def test_definition_and_attention_matrix_agree(case, rng):
    (q, k, v), exact = _inputs(case, rng, ((2,), 9, 2, 3, 4))
    for causal in (False, True):
        a = case.numpy(latte_ref.attention_matrix(q, k, causal=causal))  # [B, H, T, T]
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=case.tol * 10)
        y = np.moveaxis(a @ np.moveaxis(exact[2], -3, -2), -2, -3)
        assert relative_error(y, latte_ref.definition(*exact, causal=causal)) <= case.tol
        assert relative_error(case.numpy(latte_ref.definition(q, k, v, causal=causal)), y) <= case.tol


@pytest.mark.parametrize("chunk_size", [pytest.param(1, marks=pytest.mark.full_matrix), 3, 64, 1000])
def test_causal_is_independent_of_chunk_size(case, rng, chunk_size):
    (q, k, v), _ = _inputs(case, rng, ((2,), 71, 2, 4, 3))
    reference = case.numpy(latte_ref.causal(q, k, v, chunk_size=5))
    assert relative_error(case.numpy(latte_ref.causal(q, k, v, chunk_size=chunk_size)), reference) <= case.tol


def test_recurrent_equals_causal_with_state(case, rng):
    (q, k, v), _ = _inputs(case, rng, ((3,), 29, 2, 4, 5))
    y_rec, s_rec = latte_ref.recurrent(q, k, v, return_state=True)
    y_cau, s_cau = latte_ref.causal(q, k, v, chunk_size=8, return_state=True)
    assert relative_error(case.numpy(y_rec), case.numpy(y_cau)) <= case.tol
    # The states may differ in their shift only where ties are broken differently: compare what they mean.
    for s in (s_rec, s_cau):
        assert s.numerator.dtype == s.normaliser.dtype
    latent_rec = case.numpy(s_rec.numerator) / case.numpy(s_rec.normaliser)[..., None]
    latent_cau = case.numpy(s_cau.numerator) / case.numpy(s_cau.normaliser)[..., None]
    assert relative_error(latent_rec, latent_cau) <= case.tol


def test_streaming_with_carried_state_equals_whole_run(case, rng):
    (q, k, v), _ = _inputs(case, rng, ((2,), 60, 2, 3, 4))
    whole = case.numpy(latte_ref.causal(q, k, v))
    cuts = [0, *sorted(rng.choice(np.arange(1, 60), size=4, replace=False).tolist()), 60]
    pieces, state = [], None
    for i, (start, stop) in enumerate(itertools.pairwise(cuts)):
        piece = slice(start, stop)
        run = latte_ref.recurrent if i % 2 else latte_ref.causal  # both forms carry the same state
        y, state = run(q[:, piece, ...], k[:, piece, ...], v[:, piece, ...], state=state, return_state=True)
        pieces.append(case.numpy(y))
    assert relative_error(np.concatenate(pieces, axis=1), whole) <= case.tol
    # step continues the same state
    y_next, _ = latte_ref.step(q[:, -1, ...], k[:, -1, ...], v[:, -1, ...], state)
    assert y_next.shape == v[:, -1, ...].shape


def _segment_states(q, k, v, cuts):
    return [
        latte_ref.causal(q[a:b, ...], k[a:b, ...], v[a:b, ...], return_state=True)[1]
        for a, b in itertools.pairwise(cuts)
    ]


def _state_numpy(case, s):
    return [case.numpy(a) for a in s]


def _assert_same_state(case, s1, s2):
    m1, a1, n1 = _state_numpy(case, s1)
    m2, a2, n2 = _state_numpy(case, s2)
    np.testing.assert_array_equal(m1, m2)  # the running max is a max: exact whatever the order
    assert relative_error(a1, a2) <= case.tol
    assert relative_error(n1, n2) <= case.tol


def test_combine_is_associative_and_matches_concatenation(case, rng):
    (q, k, v), _ = _inputs(case, rng, ((), 40, 2, 3, 4))
    s1, s2, s3 = _segment_states(q, k, v, [0, 9, 23, 40])
    left = latte_ref.combine(latte_ref.combine(s1, s2), s3)
    right = latte_ref.combine(s1, latte_ref.combine(s2, s3))
    _assert_same_state(case, left, right)
    _, whole = latte_ref.causal(q, k, v, return_state=True)
    _assert_same_state(case, left, whole)


def test_combine_with_empty_state_is_identity(case, rng):
    (q, k, v), _ = _inputs(case, rng, ((), 10, 2, 3, 4))
    _, s = latte_ref.causal(q, k, v, return_state=True)
    empty = latte_ref.init_state((), 2, 3, 4, xp=case.xp, dtype=s.numerator.dtype, device=case.device)
    _assert_same_state(case, latte_ref.combine(empty, s), s)
    _assert_same_state(case, latte_ref.combine(s, empty), s)


def test_bidirectional_reads_the_final_causal_state(case, rng):
    (q, k, v), exact = _inputs(case, rng, ((2,), 19, 2, 3, 4))
    _, state = latte_ref.causal(q, k, v, return_state=True)
    _m, a, n = _state_numpy(case, state)
    p_latent = np.exp(exact[0] - exact[0].max(-1, keepdims=True))
    p_latent /= p_latent.sum(-1, keepdims=True)  # [B, T, H, L]
    expected = np.einsum("bthl,bhld->bthd", p_latent, n / a[..., None])
    assert relative_error(case.numpy(latte_ref.bidirectional(q, k, v)), expected) <= case.tol


def test_causality(case, rng):
    (q, k, v), _ = _inputs(case, rng, ((2,), 23, 2, 3, 4))
    changed = [case.numpy(a).copy() for a in (q, k, v)]
    for a in changed:
        a[:, 15:] = rng.normal(size=a[:, 15:].shape) * 5
    q2, k2, v2 = (case.array(a) for a in changed)
    for form in (latte_ref.causal, latte_ref.recurrent):
        before, after = case.numpy(form(q, k, v)), case.numpy(form(q2, k2, v2))
        np.testing.assert_array_equal(before[:, :15], after[:, :15])
        assert not np.allclose(before[:, 15:], after[:, 15:])


def test_bidirectional_is_permutation_equivariant(case, rng):
    (q, k, v), _ = _inputs(case, rng, ((), 16, 2, 3, 4))
    order = rng.permutation(16)
    permuted = [case.array(case.numpy(a)[order]) for a in (q, k, v)]
    y = case.numpy(latte_ref.bidirectional(q, k, v))
    assert relative_error(case.numpy(latte_ref.bidirectional(*permuted)), y[order]) <= case.tol


def test_outputs_lie_in_the_convex_hull_of_the_values(case, rng):
    (q, k, v), exact = _inputs(case, rng, ((2,), 31, 2, 3, 4), scale=3.0)
    values = exact[2]  # [B, T, H, D]
    slack = case.tol * np.abs(values).max()
    for y in (latte_ref.bidirectional(q, k, v), latte_ref.causal(q, k, v)):
        y = case.numpy(y)
        assert np.all(y <= values.max(axis=1, keepdims=True) + slack)
        assert np.all(y >= values.min(axis=1, keepdims=True) - slack)
    y = case.numpy(latte_ref.causal(q, k, v))  # causal: within the hull of the values so far
    assert np.all(y <= np.maximum.accumulate(values, axis=1) + slack)
    assert np.all(y >= np.minimum.accumulate(values, axis=1) - slack)


def test_step_matches_recurrent(case, rng):
    (q, k, v), _ = _inputs(case, rng, ((2,), 5, 2, 3, 4))
    expected = case.numpy(latte_ref.recurrent(q, k, v))
    state = None
    for t in range(5):
        y_t, state = latte_ref.step(q[:, t, ...], k[:, t, ...], v[:, t, ...], state)
        assert relative_error(case.numpy(y_t), expected[:, t]) <= case.tol


def test_inputs_are_not_modified(case, rng):
    (q, k, v), exact = _inputs(case, rng, ((), 9, 2, 3, 4))
    mask = case.array(np.arange(9) < 6)
    latte_ref.bidirectional(q, k, v, mask=mask)
    latte_ref.causal(q, k, v, mask=mask, chunk_size=4)
    latte_ref.recurrent(q, k, v, mask=mask)
    latte_ref.definition(q, k, v, causal=True, mask=mask)
    for before, after in zip(exact, (q, k, v)):
        np.testing.assert_array_equal(before, case.numpy(after))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n_latents", [32, 24, 96, 7, 1])  # halved to 1, to 3 and to 3; odd or 1: one reduce
def test_numpys_halved_last_axis_max_is_numpys_max(n_latents: int, dtype: type) -> None:
    from latte_ref._array import HALVED_MAX_SIZE, last_axis_max, softmax

    rng = np.random.default_rng(n_latents)
    rows = HALVED_MAX_SIZE // n_latents // 2 + 3
    x = rng.standard_normal((2, rows, n_latents)).astype(dtype)
    x[0, 0, 0], x[0, 1, -1], x[0, 2] = np.nan, np.inf, -np.inf  # a nan, a +inf and a row of -inf
    x[1, 0, n_latents // 2] = np.nan  # a nan in the second half of a row
    assert x.size >= HALVED_MAX_SIZE  # the halving path where the axis is even
    expected = np.max(x, axis=-1, keepdims=True)
    np.testing.assert_array_equal(last_axis_max(np, x), expected)
    x.flags.writeable = False
    np.testing.assert_array_equal(last_axis_max(np, x[:, ::-1]), expected[:, ::-1])  # a read-only, strided view
    np.testing.assert_array_equal(last_axis_max(np, x[:, :4]), expected[:, :4])  # small: the plain reduce
    q = x.astype(np.float64)
    q[~np.isfinite(q)] = 0.0
    reference = np.exp(q - np.max(q, axis=-1, keepdims=True))
    np.testing.assert_array_equal(softmax(np, q, axis=-1), reference / reference.sum(-1, keepdims=True))
