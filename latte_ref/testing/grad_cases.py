"""The gradient cases of ``validate(..., grad=True)``: keys tied exactly, where a backward through a max can break.

A numerically stable Latte subtracts a running (or chunk) max of the keys. Its value cancels
in the output, so the gradient must not flow through it; where several keys tie for the max,
a backward that routes the max's gradient to one of them, or to all of them, or twice through
a carried state, is wrong, yet random keys almost never tie. These cases make them tie:
all keys zero, keys on a coarse 0.5 grid (many ties, the running max among them), the
same with padding (with ``mask=``), and a carried state whose max ties with the next
call's keys (with ``state=``, causal only). Each is plain float64 NumPy, drawn from the
generator of the case (the suite seed and its name), like every other case; they run,
forward and backward, only with ``grad=True`` (``--grad``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .inputs import random_qkv

__all__ = ["GRAD_CASES", "GradCase", "build_grad_case", "grad_case_names"]


class GradCase(NamedTuple):
    """What a gradient case needs of the candidate beyond q, k, v (``"mask"``, ``"state"``), and what it probes."""

    description: str
    needs: tuple[str, ...] = ()


GRAD_CASES = {
    "tied_keys_zero": GradCase("every key 0: all tokens tie for the max in every latent"),
    "tied_keys_grid": GradCase("keys and queries on a 0.5 grid in [-1.5, 1.5]: ties with the running max, T = 131"),
    "tied_keys_padded": GradCase("keys 0 on real and padded tokens alike: padding ties with the max", ("mask",)),
    "tied_state_cuts": GradCase(
        "keys on a 0.5 grid cut into calls at 1, 17, 32: the carried max ties with the next keys", ("state",)
    ),
}
"""Name -> the gradient case; shapes as the other cases: (B = 2, T, H = 2, L = 4) keys, D = 8 values."""

STATE_CUTS = (1, 17, 32)
"""Where ``tied_state_cuts`` cuts its 50 tokens into calls."""


def grad_case_names(form: str, *, with_mask: bool = False, with_state: bool = False) -> list[str]:
    """The gradient cases for these flags, in order: the padded one with ``mask=``, the cut one with causal ``state=``.

    Examples
    --------
    >>> from latte_ref.testing.grad_cases import grad_case_names
    >>> grad_case_names("causal", with_state=True)
    ['tied_keys_zero', 'tied_keys_grid', 'tied_state_cuts']
    """
    given = {"mask": with_mask, "state": with_state and form == "causal"}
    return [name for name, case in GRAD_CASES.items() if all(given[need] for need in case.needs)]


def _grid(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest multiple of 0.5 and clipped to [-1.5, 1.5]: seven values, many ties."""
    return np.clip(np.round(2.0 * x) / 2.0, -1.5, 1.5)


def build_grad_case(
    name: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """``(q, k, v, mask, cuts)`` of the gradient case ``name``: q, k (2, T, 2, 4), v (2, T, 2, 8), mask (2, T) or None.

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref.testing.grad_cases import build_grad_case
    >>> q, k, v, mask, cuts = build_grad_case("tied_keys_grid", np.random.default_rng(0))
    >>> k.shape, sorted(set(k.ravel().tolist())) == [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], mask, cuts
    ((2, 131, 2, 4), True, None, ())
    """
    if name not in GRAD_CASES:
        raise ValueError(f"unknown gradient case {name!r}; known: {', '.join(GRAD_CASES)}")
    t = {"tied_keys_zero": 37, "tied_keys_grid": 131, "tied_keys_padded": 29, "tied_state_cuts": 50}[name]
    q, k, v = random_qkv(rng, (2,), t, 2, 4, 8)
    mask: np.ndarray | None = None
    cuts: tuple[int, ...] = ()
    if name in ("tied_keys_zero", "tied_keys_padded"):
        k = np.zeros_like(k)
    else:
        q, k = _grid(q), _grid(k)
    if name == "tied_keys_padded":
        positions = np.arange(t)
        mask = np.stack([positions < t - 5, positions >= 4])  # [2, T]: right padding, then left padding
    if name == "tied_state_cuts":
        cuts = STATE_CUTS
    return q, k, v, mask, cuts
