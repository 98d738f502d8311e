"""``step`` on a whole sequence does what its docstring says, a +inf key raises no NumPy warning, and the short
path of a finite step gives the guarded path's bits and gradients."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np
import pytest
from array_api_compat import array_namespace

import latte_ref


def test_step_reads_every_leading_axis_as_batch_as_documented() -> None:
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 5, 2, 4))  # (B, T, H, L)
    y, _ = latte_ref.step(q, k, v, None)  # (B, T) one-token sequences, not a scan over T
    one_token_each = latte_ref.causal(q[..., None, :, :], k[..., None, :, :], v[..., None, :, :])[..., 0, :, :]
    np.testing.assert_allclose(y, one_token_each, rtol=1e-12)
    assert not np.allclose(y, latte_ref.causal(q, k, v))
    _, state = latte_ref.step(q[:, 0], k[:, 0], v[:, 0], None)
    with pytest.raises(ValueError, match=r"state\.running_max"):  # with a carried state the shapes disagree
        latte_ref.step(q, k, v, state)


@pytest.mark.parametrize("form", ["step", "recurrent"])
def test_a_plus_inf_key_gives_non_finite_outputs_without_a_warning(form: str) -> None:
    q, k, v = np.random.default_rng(1).normal(size=(3, 2, 6, 2, 4))
    k[0, 2, 1, 0] = np.inf
    k[0, 4, 1, 1] = 1e3  # a huge finite key after the +inf one must not overflow either
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if form == "recurrent":
            y = latte_ref.recurrent(q, k, v)
        else:
            state, outputs = None, []
            for t in range(6):
                y_t, state = latte_ref.step(q[:, t], k[:, t], v[:, t], state)
                outputs.append(y_t)
            y = np.stack(outputs, axis=1)
    clean = latte_ref.recurrent(q, np.where(np.isinf(k), 0.0, k), v)
    np.testing.assert_array_equal(y[1], clean[1])  # the other sequence is untouched
    np.testing.assert_array_equal(y[0, :2], clean[0, :2])  # and so are the tokens before the +inf key
    assert not np.isfinite(y[0, 2:, 1]).any()


def _torch_or_skip() -> Any:
    return pytest.importorskip("torch", reason="PyTorch is not installed")


def _count_short_steps(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each call of the short path, whether it took the step (True) or declined it."""
    recurrent_module = importlib.import_module("latte_ref.recurrent")
    original = recurrent_module._finite_step
    taken: list[bool] = []

    def counting(*args: Any) -> Any:
        result = original(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(recurrent_module, "_finite_step", counting)
    return taken


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_finite_step_takes_the_short_path_and_gives_the_guarded_paths_bits(
    library: str, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = np if library == "numpy" else _torch_or_skip()
    rng = np.random.default_rng(2)
    q, k, v = (lib.asarray(30 * rng.standard_normal((3, 4, 8)).astype(dtype)) for _ in range(3))  # logits to +-100
    recurrent_module = importlib.import_module("latte_ref.recurrent")
    taken = _count_short_steps(monkeypatch)
    state, guarded_state = None, None
    for t in range(3):  # from an empty history, then with one
        y, state = latte_ref.step(q[t], k[t], v[t], state)
        xp = array_namespace(q)
        if guarded_state is None:
            guarded_state = recurrent_module.empty_state(xp, q[t], v[t], q.dtype, time_axis=False)
        guarded_y, guarded_state = recurrent_module._step(xp, q[t], k[t], v[t], guarded_state)
        for mine, guarded in zip((y, *state), (guarded_y, *guarded_state), strict=True):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(guarded))
    assert taken == [True, True, True]


@pytest.mark.parametrize("special", ["padding on an empty history", "+inf key", "nan key", "query of -inf"])
def test_special_values_take_the_guarded_path(special: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((3, 2, 4, 8))
    mask = None
    if special == "padding on an empty history":
        mask = np.array([True, False])
    elif special == "+inf key":
        k[1, 2, 3] = np.inf
    elif special == "nan key":
        k[0, 1, 5] = np.nan
    else:
        q[1, 0, :] = -np.inf
    taken = _count_short_steps(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the guarded path meets its special values without NumPy warnings
        y, state = latte_ref.step(q, k, v, None, mask_t=mask)
    assert taken == [False]
    expected, expected_state = latte_ref.recurrent(
        q[:, None], k[:, None], v[:, None], mask=None if mask is None else mask[:, None], return_state=True
    )
    np.testing.assert_array_equal(y, expected[:, 0])
    for mine, theirs in zip(state, expected_state, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_short_path_gradients_equal_the_guarded_paths() -> None:
    torch = _torch_or_skip()
    rng = np.random.default_rng(4)
    q, k, v = (torch.tensor(5 * rng.standard_normal((2, 3, 6)), requires_grad=True) for _ in range(3))
    history = [torch.tensor(5 * rng.standard_normal((2, 4, 3, 6)), requires_grad=True) for _ in range(3)]
    k_tie = k.detach().clone()
    _, state = latte_ref.causal(*history, return_state=True)
    k_tie[0, 1] = state.running_max[0, 1].detach()  # keys equal to the running max: a tie in the maximum
    k_tie.requires_grad_(True)

    xp = array_namespace(q)
    recurrent_module = importlib.import_module("latte_ref.recurrent")
    for keys in (k, k_tie):
        y = latte_ref.step(q, keys, v, state)[0]
        guarded = recurrent_module._step(xp, q, keys, v, state)[0]
        weights = torch.tensor(rng.standard_normal(tuple(y.shape)))
        inputs = (q, keys, v, *history)
        mine = torch.autograd.grad(y, inputs, weights, retain_graph=True, allow_unused=True)
        theirs = torch.autograd.grad(guarded, inputs, weights, retain_graph=True, allow_unused=True)
        for a, b in zip(mine, theirs, strict=True):
            assert (a is None) == (b is None)  # the history's queries do not reach the state
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda *a: latte_ref.step(*a, state)[0], (q, k_tie, v))
