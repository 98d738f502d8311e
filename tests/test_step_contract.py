"""``step`` on a whole sequence does what its docstring says, and a +inf key raises no NumPy warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

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
