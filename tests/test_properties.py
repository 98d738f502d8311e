"""Invariants of Latte under random input, drawn by hypothesis.

Shapes, dtypes, masks, chunk sizes, cut points and the array library (NumPy or
array-api-strict) are drawn per example. The number of examples per property comes
from the hypothesis profile that tests/conftest.py loads: 200 by default, 2000 with
``--slow``. Shapes stay tiny so that many examples are cheap.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import latte_ref
from latte_ref import backends
from latte_ref.state import restart
from latte_ref.testing.matrix import Case
from latte_ref.testing.tolerance import relative_error

LIBRARIES = [name for name in ("numpy", "array_api_strict") if backends.get_backend(name).unavailable_reason() is None]


@dataclass
class Problem:
    """One drawn input on one case: NumPy float64 copies of what the library holds (after rounding)."""

    case: Case
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None

    @property
    def library(self) -> str:
        return self.case.backend.name

    @property
    def dtype(self) -> str:
        return self.case.dtype_name

    def array(self, x: np.ndarray) -> Any:
        return self.case.array(x)

    def arrays(self) -> tuple[Any, Any, Any, Any]:
        mask = None if self.mask is None else self.array(self.mask)
        return self.array(self.q), self.array(self.k), self.array(self.v), mask

    def numpy(self, x: Any) -> np.ndarray:
        return self.case.numpy(x)

    @property
    def cheap_scan(self) -> bool:
        """Whether to run the token-by-token forms: on array-api-strict each step costs too much for many examples."""
        return self.library == "numpy"

    @property
    def tol(self) -> float:
        return self.case.tol

    @property
    def n_tokens(self) -> int:
        return self.q.shape[-3]


@st.composite
def problems(draw: st.DrawFn, *, masks: bool = True, min_tokens: int = 0, batch: bool = True) -> Problem:
    batch_shape = draw(st.sampled_from([(), (2,)])) if batch else ()
    n_tokens = draw(st.integers(min_tokens, 7))
    heads, latents, dim = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    scale = draw(st.sampled_from([0.01, 1.0, 30.0, 300.0]))  # 300: logits far outside exp's float32 range
    # Values from a drawn seed (cheap to draw), optionally on a coarse grid so that ties are common.
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    grid = draw(st.sampled_from([None, 0.5]))

    def draw_array(last: int) -> np.ndarray:
        x = rng.uniform(-1, 1, size=(*batch_shape, n_tokens, heads, last))
        return x if grid is None else np.round(x / grid) * grid

    q, k = draw_array(latents) * scale, draw_array(latents) * scale
    v = draw_array(dim)
    mask = draw(hnp.arrays(np.bool_, (*batch_shape, n_tokens))) if masks and draw(st.booleans()) else None
    library = draw(st.sampled_from(LIBRARIES))
    backend = backends.get_backend(library)
    problem = Problem(Case(backend, backend.devices()[0], dtype), q, k, v, mask)
    # Keep the values as the library holds them, so that the float64 oracle sees the same inputs.
    problem.q, problem.k, problem.v = (problem.numpy(problem.array(a)) for a in (q, k, v))
    return problem


def _error(p: Problem, actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |v|.

    Outputs and latent values are convex combinations of the values, so their rounding error
    scales with max |v|; measured against max |expected| instead, values that cancel (an output
    of 1e-5 from values of size 1) would make any rounding look large.
    """
    scale = max(float(np.max(np.abs(p.v), initial=0.0)), float(np.max(np.abs(expected), initial=0.0)))
    return relative_error(actual, expected, scale)


def _oracle(p: Problem, causal: bool) -> np.ndarray:
    return latte_ref.definition(p.q, p.k, p.v, causal=causal, mask=p.mask)


def _tokens(x: Any, start: int, stop: int, *, mask: bool = False) -> Any:
    if x is None:
        return None
    return x[..., start:stop] if mask else x[..., start:stop, :, :]


@given(problems(), st.integers(1, 10))
def test_forms_agree_with_the_definition(p: Problem, chunk_size: int) -> None:
    q, k, v, mask = p.arrays()
    bidirectional, causal = _oracle(p, causal=False), _oracle(p, causal=True)
    assert _error(p, p.numpy(latte_ref.bidirectional(q, k, v, mask=mask)), bidirectional) <= p.tol
    assert _error(p, p.numpy(latte_ref.causal(q, k, v, mask=mask, chunk_size=chunk_size)), causal) <= p.tol
    if p.cheap_scan:
        assert _error(p, p.numpy(latte_ref.recurrent(q, k, v, mask=mask)), causal) <= p.tol


@given(problems(), st.integers(1, 10), st.integers(1, 10))
def test_causal_does_not_depend_on_chunk_size(p: Problem, c1: int, c2: int) -> None:
    q, k, v, mask = p.arrays()
    y1 = p.numpy(latte_ref.causal(q, k, v, mask=mask, chunk_size=c1))
    y2 = p.numpy(latte_ref.causal(q, k, v, mask=mask, chunk_size=c2))
    assert _error(p, y1, y2) <= p.tol


@given(problems(), st.lists(st.integers(0, 9), max_size=4), st.integers(1, 6))
def test_streaming_with_carried_state_equals_the_whole_run(p: Problem, cuts: list[int], chunk_size: int) -> None:
    q, k, v, mask = p.arrays()
    whole, whole_state = latte_ref.causal(q, k, v, mask=mask, chunk_size=chunk_size, return_state=True)
    bounds = [0, *sorted(c for c in cuts if c <= p.n_tokens), p.n_tokens]
    pieces, state = [], None
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        args = (_tokens(a, start, stop) for a in (q, k, v))
        piece_mask = _tokens(mask, start, stop, mask=True)
        if i % 2 and p.cheap_scan:
            y, state = latte_ref.recurrent(*args, mask=piece_mask, state=state, return_state=True)
        else:
            y, state = latte_ref.causal(*args, mask=piece_mask, state=state, chunk_size=chunk_size, return_state=True)
        pieces.append(p.numpy(y))
    assert _error(p, np.concatenate(pieces, axis=-3), p.numpy(whole)) <= p.tol
    assert state is not None
    np.testing.assert_array_equal(p.numpy(state.running_max), p.numpy(whole_state.running_max))
    assert _error(p, _latent_values(p, state), _latent_values(p, whole_state)) <= p.tol


def _packing(p: Problem, data: st.DataObject) -> np.ndarray:
    """Random segment ids for the problem's rows (..., T): a new document wherever a drawn flag is set."""
    starts = data.draw(hnp.arrays(np.bool_, p.mask.shape if p.mask is not None else p.q.shape[:-2]))
    return np.cumsum(starts, axis=-1)


@given(problems(), st.data(), st.integers(1, 10))
def test_forms_agree_with_the_definition_on_random_packings(p: Problem, data: st.DataObject, chunk_size: int) -> None:
    q, k, v, mask = p.arrays()
    ids = _packing(p, data)
    options = {"mask": mask, "segment_ids": p.array(ids)}
    expected = {c: latte_ref.definition(p.q, p.k, p.v, causal=c, mask=p.mask, segment_ids=ids) for c in (False, True)}
    assert _error(p, p.numpy(latte_ref.bidirectional(q, k, v, **options)), expected[False]) <= p.tol
    assert _error(p, p.numpy(latte_ref.causal(q, k, v, chunk_size=chunk_size, **options)), expected[True]) <= p.tol
    if p.cheap_scan:
        assert _error(p, p.numpy(latte_ref.recurrent(q, k, v, **options)), expected[True]) <= p.tol


@given(problems(), st.data(), st.lists(st.integers(0, 9), max_size=4), st.integers(1, 6))
def test_streaming_a_random_packing_equals_the_whole_run(
    p: Problem, data: st.DataObject, cuts: list[int], chunk_size: int
) -> None:
    """Cut anywhere: the state carries a document on, and a row whose cut falls on a boundary drops it."""
    q, k, v, mask = p.arrays()
    ids = _packing(p, data)
    whole = latte_ref.causal(q, k, v, mask=mask, segment_ids=p.array(ids), chunk_size=chunk_size)
    bounds = [0, *sorted(c for c in cuts if c <= p.n_tokens), p.n_tokens]
    pieces, state = [], None
    for start, stop in itertools.pairwise(bounds):
        if state is not None and 0 < start < p.n_tokens:
            new_document = p.array(ids[..., start] != ids[..., start - 1])
            state = restart(p.case.xp, state, new_document)
        y, state = latte_ref.causal(
            *(_tokens(a, start, stop) for a in (q, k, v)),
            mask=_tokens(mask, start, stop, mask=True),
            segment_ids=p.array(ids[..., start:stop]),
            state=state,
            chunk_size=chunk_size,
            return_state=True,
        )
        pieces.append(p.numpy(y))
    assert _error(p, np.concatenate(pieces, axis=-3), p.numpy(whole)) <= p.tol


def _latent_values(p: Problem, state: latte_ref.LatteState) -> np.ndarray:
    """S / a per latent, 0 for a latent with no keys yet: what a state means, whatever its shift."""
    a = p.numpy(state.normaliser)[..., None]
    return np.divide(p.numpy(state.numerator), a, out=np.zeros_like(p.numpy(state.numerator)), where=a > 0)


def _state_of(p: Problem, start: int, stop: int) -> latte_ref.LatteState:
    q, k, v, mask = p.arrays()
    args = (_tokens(a, start, stop) for a in (q, k, v))
    return latte_ref.causal(*args, mask=_tokens(mask, start, stop, mask=True), return_state=True)[1]


@given(problems(), st.integers(0, 9), st.integers(0, 9))
def test_combine_is_associative(p: Problem, cut1: int, cut2: int) -> None:
    a, b = sorted((min(cut1, p.n_tokens), min(cut2, p.n_tokens)))
    s1, s2, s3 = _state_of(p, 0, a), _state_of(p, a, b), _state_of(p, b, p.n_tokens)
    left = latte_ref.combine(latte_ref.combine(s1, s2), s3)
    right = latte_ref.combine(s1, latte_ref.combine(s2, s3))
    whole = _state_of(p, 0, p.n_tokens)
    for other in (right, whole):
        np.testing.assert_array_equal(p.numpy(left.running_max), p.numpy(other.running_max))
        assert relative_error(p.numpy(left.normaliser), p.numpy(other.normaliser)) <= p.tol
        assert _error(p, _latent_values(p, left), _latent_values(p, other)) <= p.tol


@given(problems(min_tokens=1), st.data())
def test_causal_outputs_ignore_the_future(p: Problem, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, p.n_tokens - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    changed = [a.copy() for a in (p.q, p.k, p.v)]
    for a in changed:
        a[..., cut:, :, :] = rng.normal(scale=50, size=a[..., cut:, :, :].shape)
    mask = None if p.mask is None else p.array(p.mask)
    for form in (latte_ref.causal, latte_ref.recurrent) if p.cheap_scan else (latte_ref.causal,):
        before = p.numpy(form(*(p.array(a) for a in (p.q, p.k, p.v)), mask=mask))
        after = p.numpy(form(*(p.array(a) for a in changed), mask=mask))
        np.testing.assert_array_equal(before[..., :cut, :, :], after[..., :cut, :, :])


@given(problems(batch=False), st.randoms(use_true_random=False))
def test_bidirectional_is_permutation_equivariant(p: Problem, random: Any) -> None:
    order = list(range(p.n_tokens))
    random.shuffle(order)
    q, k, v, mask = p.arrays()
    y = p.numpy(latte_ref.bidirectional(q, k, v, mask=mask))
    permuted = (p.array(a[order]) for a in (p.q, p.k, p.v))
    y_permuted = p.numpy(latte_ref.bidirectional(*permuted, mask=None if p.mask is None else p.array(p.mask[order])))
    assert _error(p, y_permuted, y[order]) <= p.tol


@given(problems())
def test_outputs_lie_in_the_convex_hull_of_the_values(p: Problem) -> None:
    q, k, v, mask = p.arrays()
    real = np.ones(p.q.shape[:-2], dtype=bool) if p.mask is None else p.mask  # [..., T]
    values = np.where(real[..., None, None], p.v, np.nan)  # padding is no value
    slack = p.tol * max(float(np.max(np.abs(p.v), initial=0.0)), 1e-30)
    with np.errstate(invalid="ignore"):
        low = np.fmin.accumulate(values, axis=-3)
        high = np.fmax.accumulate(values, axis=-3)
    for y, lo, hi in (
        (latte_ref.causal(q, k, v, mask=mask), low, high),
        *(((latte_ref.recurrent(q, k, v, mask=mask), low, high),) if p.cheap_scan else ()),
        (latte_ref.bidirectional(q, k, v, mask=mask), low[..., -1:, :, :], high[..., -1:, :, :]),
    ):
        y = p.numpy(y)
        inside = (y >= lo - slack) & (y <= hi + slack)
        assert np.all(inside | ~real[..., None, None]), "an output left the hull of the values it reads"
        assert np.all(y[~real] == 0)


@given(problems(), st.integers(1, 10))
def test_the_same_call_twice_gives_the_same_bits(p: Problem, chunk_size: int) -> None:
    q, k, v, mask = p.arrays()
    calls = {
        "bidirectional": lambda: latte_ref.bidirectional(q, k, v, mask=mask),
        "causal": lambda: latte_ref.causal(q, k, v, mask=mask, chunk_size=chunk_size),
        "recurrent": lambda: latte_ref.recurrent(q, k, v, mask=mask),
        "definition": lambda: latte_ref.definition(q, k, v, causal=True, mask=mask),
    }
    if not p.cheap_scan:
        del calls["recurrent"]
    for name, call in calls.items():
        np.testing.assert_array_equal(p.numpy(call()), p.numpy(call()), err_msg=name)


@given(problems(min_tokens=1), st.integers(1, 10))
def test_inputs_are_never_modified(p: Problem, chunk_size: int) -> None:
    q, k, v, mask = p.arrays()
    if p.library == "numpy":  # read-only arrays: writing into one raises
        for a in (q, k, v, mask):
            if a is not None:
                a.flags.writeable = False
    state = latte_ref.causal(q, k, v, mask=mask, return_state=True)[1]
    kept = [p.numpy(a) for a in state]
    latte_ref.bidirectional(q, k, v, mask=mask)
    latte_ref.causal(q, k, v, mask=mask, chunk_size=chunk_size, state=state)
    if p.cheap_scan:
        latte_ref.recurrent(q, k, v, mask=mask, state=state)
    latte_ref.definition(q, k, v, causal=True, mask=mask)
    latte_ref.step(q[..., 0, :, :], k[..., 0, :, :], v[..., 0, :, :], state)
    latte_ref.combine(state, state)
    for before, after in zip((p.q, p.k, p.v), (q, k, v), strict=True):
        np.testing.assert_array_equal(before, p.numpy(after))
    if mask is not None:
        np.testing.assert_array_equal(p.mask, p.numpy(mask) > 0)
    for before, after in zip(kept, state, strict=True):
        np.testing.assert_array_equal(before, p.numpy(after))


def test_every_library_is_drawn() -> None:
    assert "numpy" in LIBRARIES
    if backends.get_backend("array_api_strict").unavailable_reason() is None:
        assert "array_api_strict" in LIBRARIES
    else:
        pytest.skip("array-api-strict is not installed")
