"""Extreme input: huge and tied logits, long sequences of growing keys, nan and inf, empty and padded input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.matrix import Case
from latte_ref.testing.tolerance import TOLERANCES, relative_error

# The conftest's `case` on every installed backend x device x dtype, JAX and Dask only with --slow: they run
# the same code as the eager backends (test_forms covers them by default), but here each new shape costs
# them seconds of tracing or graph building on a small machine.
pytestmark = pytest.mark.full_matrix


# Largest logit magnitude tried per input dtype: float16 stops at 65504.
LOGIT_SCALE = {"float64": 1e4, "float32": 1e4, "bfloat16": 1e4, "float16": 6e4}


def _all_forms(q: Any, k: Any, v: Any, mask: Any = None) -> dict[str, tuple[Any, bool]]:
    """Every form's output, with whether it is causal."""
    return {
        "bidirectional": (latte_ref.bidirectional(q, k, v, mask=mask), False),
        "definition-bidirectional": (latte_ref.definition(q, k, v, causal=False, mask=mask), False),
        "causal": (latte_ref.causal(q, k, v, mask=mask), True),
        "causal-chunk-5": (latte_ref.causal(q, k, v, mask=mask, chunk_size=5), True),
        "recurrent": (latte_ref.recurrent(q, k, v, mask=mask), True),
        "definition-causal": (latte_ref.definition(q, k, v, causal=True, mask=mask), True),
    }


def _logits(rng: np.random.Generator, kind: str, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "spread":  # uniform over [-scale, scale]: nearly one-hot softmaxes
        return rng.uniform(-scale, scale, size=shape)
    if kind == "tied-high":  # all near +scale, differences of a few units (a few ulps in float16)
        return scale - rng.uniform(0, 4, size=shape) * max(1.0, scale / 2048)
    if kind == "two-camps":  # half the logits near +scale, half near -scale
        return np.where(rng.random(shape) < 0.5, scale, -scale) + rng.normal(size=shape)
    raise ValueError(kind)


def test_huge_logits_stay_finite_and_accurate(case: Case, rng: np.random.Generator) -> None:
    scale = LOGIT_SCALE[case.dtype_name]
    kinds = ("spread", "tied-high", "two-camps")  # one batch row each
    q, k = (case.array(np.stack([_logits(rng, kind, scale, (12, 2, 3)) for kind in kinds])) for _ in range(2))
    v = case.array(rng.normal(size=(3, 12, 2, 4)))
    exact = [case.numpy(a) for a in (q, k, v)]
    assert np.max(np.abs(exact[1])) > 0.9 * scale
    for name, (y, causal) in _all_forms(q, k, v).items():
        y = case.numpy(y)
        assert np.all(np.isfinite(y)), name
        expected = latte_ref.definition(*exact, causal=causal)
        for row, kind in enumerate(kinds):
            assert relative_error(y[row], expected[row]) <= case.tol, (name, kind)


def test_nearly_tied_logits_split_the_weight(rng: np.random.Generator) -> None:
    """Two keys a float32 ulp apart at 1e4 share a latent's weight almost equally, as in float64."""
    k = np.full((2, 1, 1), 1e4, dtype=np.float32)
    k[1] = np.nextafter(np.float32(1e4), np.float32(np.inf))
    q = np.zeros((2, 1, 1), dtype=np.float32)
    v = np.array([0.0, 1.0], dtype=np.float32).reshape(2, 1, 1)
    delta = float(k[1, 0, 0]) - 1e4
    expected = 1 / (1 + np.exp(-delta))  # weight of the second key
    causal: Any = latte_ref.causal(q, k, v)
    for y in (latte_ref.bidirectional(q, k, v), causal):
        assert abs(float(y[-1, 0, 0]) - expected) <= TOLERANCES["float32"][1]


# ---- keys that grow along a long sequence -------------------------------------------------------------------------


def _log_cumulative(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 log-space prefix sums: log sum_s exp(k_s) and log sum_s exp(k_s) v_s^{+/-}, per latent and value.

    k: (T, H, L), v: (T, H, D) -> (T, H, L), (T, H, L, D), (T, H, L, D). Independent of the library's shifts.
    """
    with np.errstate(divide="ignore"):
        log_pos, log_neg = np.log(np.maximum(v, 0)), np.log(np.maximum(-v, 0))
    log_a = np.logaddexp.accumulate(k, axis=0)
    log_s_pos = np.logaddexp.accumulate(k[..., None] + log_pos[:, :, None, :], axis=0)
    log_s_neg = np.logaddexp.accumulate(k[..., None] + log_neg[:, :, None, :], axis=0)
    return log_a, log_s_pos, log_s_neg


def _growing_keys_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    log_a, log_s_pos, log_s_neg = _log_cumulative(k, v)
    if not causal:  # every query reads the whole sequence: the last prefix
        log_a, log_s_pos, log_s_neg = log_a[-1:], log_s_pos[-1:], log_s_neg[-1:]
    latent_values = np.exp(log_s_pos - log_a[..., None]) - np.exp(log_s_neg - log_a[..., None])  # [T, H, L, D]
    p_latent = np.exp(q - q.max(-1, keepdims=True))
    p_latent /= p_latent.sum(-1, keepdims=True)  # [T, H, L]
    return np.einsum("thl,thld->thd", p_latent, latent_values)


def _growing_keys(n_tokens: int, dtype: str, top: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys rising linearly to ``top`` (at two rates), far beyond exp's range in float32 (about 88)."""
    rng = np.random.default_rng(7)
    s = np.arange(n_tokens, dtype=np.float64)[:, None, None]
    k = (s / n_tokens) * np.array([top, top / 3])[None, None, :] + rng.normal(scale=0.5, size=(n_tokens, 1, 2))
    q = rng.normal(size=(n_tokens, 1, 2))
    v = rng.normal(size=(n_tokens, 1, 3))
    return tuple(a.astype(dtype) for a in (q, k, v))  # type: ignore[return-value]


def _check_growing_keys(n_tokens: int, dtype: str, top: float, forms: dict[str, Any]) -> None:
    q, k, v = _growing_keys(n_tokens, dtype, top)
    exact = [a.astype(np.float64) for a in (q, k, v)]
    assert np.ptp(exact[1][..., 1]) > 2 * 88  # no single shift keeps every exp(k - shift) in float32 range
    for name, (form, causal) in forms.items():
        y = np.asarray(form(q, k, v), dtype=np.float64)
        assert np.all(np.isfinite(y)), name
        expected = _growing_keys_reference(exact[0], exact[1], exact[2], causal=causal)
        assert relative_error(y, expected) <= TOLERANCES[dtype][1], name


CAUSAL_FORMS = {
    "causal": (latte_ref.causal, True),
    "causal-chunk-7": (lambda q, k, v: latte_ref.causal(q, k, v, chunk_size=7), True),
    "bidirectional": (latte_ref.bidirectional, False),
}


def test_growing_keys_65k_tokens_float32() -> None:
    _check_growing_keys(65_536, "float32", 2000.0, CAUSAL_FORMS)


def test_growing_keys_float16_and_recurrent() -> None:
    _check_growing_keys(4096, "float16", 600.0, {**CAUSAL_FORMS, "recurrent": (latte_ref.recurrent, True)})


@pytest.mark.slow
def test_growing_keys_one_million_tokens_float32() -> None:
    _check_growing_keys(1_000_000, "float32", 1e4, CAUSAL_FORMS)


# ---- nan and inf ---------------------------------------------------------------------------------------------------

POISON_AT = 11  # inside a chunk of 5 (10..14) and of the default size: earlier rows of its chunk must stay clean


POISONS = [("q", np.nan), ("k", np.nan), ("v", np.nan), ("k", np.inf), ("v", np.inf), ("v", -np.inf)]


def test_a_non_finite_input_reaches_only_the_outputs_that_read_it(case: Case, rng: np.random.Generator) -> None:
    """Batch row i + 1 carries poison i at token POISON_AT; row 0 is clean and must not change either.

    Each row is compared with the same row of an unpoisoned call: a matrix product may round the
    same numbers differently at another batch position (its memory alignment differs), so rows
    are not compared with each other.
    """
    clean = {
        name: np.repeat(rng.normal(size=(1, 17, 2, 4 if name == "v" else 3)), len(POISONS) + 1, 0) for name in "qkv"
    }
    poisoned = {name: a.copy() for name, a in clean.items()}
    for row, (where, value) in enumerate(POISONS, start=1):
        poisoned[where][row, POISON_AT, 1, 0] = value
    outputs = _all_forms(*(case.array(poisoned[n]) for n in "qkv"))
    for (name, (y, causal)), (y_clean, _) in zip(
        outputs.items(), _all_forms(*(case.array(clean[n]) for n in "qkv")).values()
    ):
        y, y_clean = case.numpy(y), case.numpy(y_clean)
        np.testing.assert_array_equal(y[0], y_clean[0], err_msg=f"{name}: the clean batch row was touched")
        for row, (where, value) in enumerate(POISONS, start=1):
            if where == "q":  # a query only reads for itself
                untouched = np.arange(17) != POISON_AT
            elif causal:
                untouched = np.arange(17) < POISON_AT
            else:
                untouched = np.zeros(17, dtype=bool)
            np.testing.assert_array_equal(y[row, untouched], y_clean[row, untouched], err_msg=f"{name} {where}={value}")
            assert not np.all(np.isfinite(y[row, POISON_AT])), f"{name} {where}={value}: reads as finite"


def test_minus_inf_key_is_no_key_and_minus_inf_query_reads_nothing(case: Case, rng: np.random.Generator) -> None:
    q, k, v = (rng.normal(size=(9, 2, d)) for d in (3, 3, 4))
    k[4] = -np.inf  # token 4 is no key in any latent: as if padded, but it still reads
    q[6] = -np.inf  # query 6 has no latent to read from: output 0
    mask_k = np.arange(9) != 4
    for name, (y, causal) in _all_forms(*(case.array(a) for a in (q, k, v))).items():
        y = case.numpy(y)
        assert np.all(np.isfinite(y)), name
        np.testing.assert_array_equal(y[6], 0.0, err_msg=name)
        q_exact, k_exact, v_exact = (case.numpy(case.array(a)) for a in (q, k, v))
        for t in range(9):
            keys = mask_k & (np.arange(9) <= t) if causal else mask_k
            expected = _read(q_exact[t], k_exact[keys], v_exact[keys])
            assert relative_error(y[t], expected) <= case.tol, (name, t)


def _read(q_t: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """y_t = sum_l p(l | t) sum_s p(s | l) v_s in float64: one query (H, L), keys (S, H, L), values (S, H, D)."""
    with np.errstate(invalid="ignore"):
        p_latent = np.exp(q_t - q_t.max(-1, keepdims=True))
    p_latent = np.nan_to_num(p_latent / p_latent.sum(-1, keepdims=True))  # a query of all -inf reads nothing
    p_key = np.exp(k - k.max(0))
    p_key /= p_key.sum(0)  # [S, H, L]
    return np.einsum("hl,shl,shd->hd", p_latent, p_key, v)


# ---- empty and fully padded ----------------------------------------------------------------------------------------


def test_fully_padded_sequences_give_zeros(case: Case, rng: np.random.Generator) -> None:
    q, k, v = (case.array(rng.normal(size=(2, 6, 2, d)) * 50) for d in (3, 3, 4))
    mask = case.array(np.zeros((2, 6), dtype=bool))
    for name, (y, _) in _all_forms(q, k, v, mask=mask).items():
        y = case.numpy(y)
        assert y.shape == (2, 6, 2, 4)
        np.testing.assert_array_equal(y, 0.0, err_msg=name)
    params = latte_ref.init_params(8, 4, 2, xp=case.xp, dtype=case.dtype, device=case.device)
    x = case.array(rng.normal(size=(2, 6, 8)))
    for form in (None, "definition", "recurrent"):
        np.testing.assert_array_equal(
            case.numpy(latte_ref.latte_attention(x, params, causal=True, mask=mask, form=form)), 0
        )


def test_no_tokens_gives_an_empty_output(case: Case) -> None:
    q, k, v = (case.array(np.zeros((3, 0, 2, d))) for d in (4, 4, 5))
    for name, (y, _) in _all_forms(q, k, v).items():
        assert tuple(y.shape) == (3, 0, 2, 5) and y.dtype == q.dtype, name
    assert tuple(latte_ref.attention_matrix(q, k, causal=True).shape) == (3, 2, 0, 0)
    state = latte_ref.init_state((3,), 2, 4, 5, xp=case.xp, device=case.device)
    for form in (latte_ref.causal, latte_ref.recurrent):
        y, after = form(q, k, v, state=state, return_state=True)
        assert tuple(y.shape) == (3, 0, 2, 5)
        for a, b in zip(after, state, strict=True):
            np.testing.assert_array_equal(case.numpy(a), case.numpy(b))
    params = latte_ref.init_params(8, 4, 2, xp=case.xp, dtype=case.dtype, device=case.device)
    assert tuple(latte_ref.latte_attention(case.array(np.zeros((3, 0, 8))), params, causal=False).shape) == (3, 0, 8)


# NumPy's floating-point warnings only: a huge v is also warned about on purpose (see state.py), not by NumPy.
@pytest.mark.filterwarnings("error:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("error:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("error:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize(
    ("where", "value"), [("q", np.nan), ("q", np.inf), ("k", np.nan), ("k", np.inf), ("k", -np.inf), ("v", np.nan)]
)
def test_a_non_finite_input_raises_no_numpy_warning(where: str, value: float, rng: np.random.Generator) -> None:
    """nan and ±inf logits, and nan values, give nan outputs without NumPy's RuntimeWarning.

    No ``inf - inf`` is ever evaluated (see ``finite_or_zero``). An infinite value can still warn: its
    product with a weight that underflowed to 0 is ``0 * inf`` inside a matrix product.
    """
    q, k, v = (rng.normal(size=(2, 17, 2, d)) for d in (3, 3, 4))
    inputs = {"q": q, "k": k, "v": v}
    inputs[where][1, POISON_AT, 1, 0] = value
    for name, (y, _) in _all_forms(*inputs.values()).items():
        assert np.all(np.isfinite(y[0])), f"{name}: the clean batch row is not finite"
        if value != -np.inf:
            assert not np.all(np.isfinite(y[1, POISON_AT])), f"{name} {where}={value}: reads as finite"
