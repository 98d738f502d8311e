r"""Gradients through a framework's autograd, for ``latte-ref check`` and ``latte-ref validate --grad``.

Both compare the gradient of a fixed random linear read-out of the output,

.. math::

    \mathcal{L}(q, k, v) = \sum_{t, h, d} y_{thd} \, w_{thd},

with respect to q, k and v (a vector-Jacobian product with cotangent ``w``) against the
same gradient of :func:`latte_ref.definition` in float64 in the same framework. The error
is one number, :func:`gradient_error`: the largest ``max |g - g_ref|`` of the three,
relative to the largest ``max |g_ref|`` of the three (the gradients of q and k vanish
where p(l | t) or p(s | l) is one-hot, so each alone can be 0).

Only PyTorch (``torch.autograd``) and JAX (``jax.vjp``) have autograd; each backend's adapter
(``vjp``) reaches it, so this module imports no framework.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backends
from .candidate import describe_exception
from .tolerance import GRAD_TOLERANCES, grad_tolerance

__all__ = [
    "AUTOGRAD_BACKENDS",
    "GradientCheck",
    "compare_gradients",
    "gradient_error",
    "gradients",
    "has_autograd",
    "readout_weights",
]

AUTOGRAD_BACKENDS = ("torch", "jax")
"""The backends whose arrays carry gradients."""

GRADIENT_NAMES = ("dq", "dk", "dv")


def has_autograd(backend: backends.Backend | str) -> bool:
    """Whether gradients can be taken through the backend's arrays (torch and jax)."""
    name = backend if isinstance(backend, str) else backend.name
    return name in AUTOGRAD_BACKENDS


def readout_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """The read-out ``w`` of ``sum(y * w)``: standard normal of the output's shape (..., T, H, D), float64."""
    return rng.normal(size=shape)


def gradients(
    backend: backends.Backend,
    function: Callable[[Any, Any, Any], Any],
    inputs: tuple[np.ndarray, ...],
    weights: np.ndarray,
    *,
    dtype: str,
    device: Any = None,
    jit: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d sum(y * w) / d(q, k, v) for y = ``function(q, k, v)``, as float64 NumPy arrays of the inputs' shapes.

    Parameters
    ----------
    backend : Backend
        torch or jax (:func:`has_autograd`).
    function : callable
        ``function(q, k, v) -> y`` on the backend's arrays, y (..., T, H, D).
    inputs : (q, k, v), float64 NumPy
        q, k (..., T, H, L), v (..., T, H, D); cast to ``dtype`` on ``device``.
    weights : ndarray, shape of y
        The read-out w: the cotangent of y, cast to y's dtype.
    dtype : str
        Of the inputs; ``"float64"`` on JAX turns x64 on inside (and restores it).
    jit : bool
        On JAX, compile the forward and backward as one ``jax.jit`` function: one compilation
        instead of one per operation, for a function that can be traced (not a candidate's).

    An input that y does not depend on through autograd (a detached one) gets a zero gradient.
    """
    if backend.name not in AUTOGRAD_BACKENDS:
        raise ValueError(f"backend {backend.name!r} has no autograd; gradients need one of {AUTOGRAD_BACKENDS}")
    with _x64_for(backend, dtype):
        q, k, v = (backend.asarray(a, dtype=dtype, device=device) for a in inputs)
        found = backend.vjp(function, (q, k, v), weights, jit=jit)
        grads = tuple(
            np.zeros(a.shape) if g is None else np.asarray(backend.to_numpy(g), dtype=np.float64)
            for a, g in zip(inputs, found, strict=True)
        )
    return grads[0], grads[1], grads[2]


@contextlib.contextmanager
def _x64_for(backend: backends.Backend, dtype: str) -> Iterator[None]:
    """JAX's x64 on for float64 inside; otherwise (and on torch) whatever it already is."""
    if backend.name == "jax" and dtype == "float64":
        with backend.x64(True):  # type: ignore[attr-defined]
            yield
    else:
        yield


def gradient_error(actual: tuple[np.ndarray, ...], expected: tuple[np.ndarray, ...]) -> tuple[float, str]:
    """``(error, worst)``: the largest ``max |g - g_ref|`` over dq, dk, dv, over the largest ``max |g_ref|``.

    ``worst`` names the gradient with the largest error (``"dk"``). A non-finite or mis-shaped gradient is ``inf``.

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref.testing.gradients import gradient_error
    >>> expected = (np.zeros(2), np.array([1.0, -4.0]), np.array([2.0, 0.5]))
    >>> gradient_error((np.zeros(2), np.array([1.0, -4.0]), np.array([2.0, 0.3])), expected)
    (0.05, 'dv')
    """
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in expected)
    worst, largest = GRADIENT_NAMES[0], -1.0
    for name, a, e in zip(GRADIENT_NAMES, actual, expected, strict=True):
        if a.shape != e.shape or not np.all(np.isfinite(a)):
            return float("inf"), name
        error = float(np.max(np.abs(a - e), initial=0.0))
        if error > largest:
            worst, largest = name, error
    return largest / max(scale, 1e-300), worst


@dataclass
class GradientCheck:
    """The gradients of one case against the reference's: the error, its bound, and the arrays.

    ``worst`` names the gradient with the largest error (``"dk"``); ``note`` says why there is
    no error to compare (the backward raised), with the whole ``traceback``.
    """

    error: float
    bound: float
    rule: str
    worst: str = ""
    note: str = ""
    traceback: str = ""
    actual: tuple[np.ndarray, ...] = ()
    expected: tuple[np.ndarray, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.note and self.error <= self.bound


Function = Callable[[Any, Any, Any], Any]


def compare_gradients(
    backend: backends.Backend,
    candidate: Function,
    reference: Function,
    inputs: tuple[np.ndarray, ...],
    weights: np.ndarray,
    *,
    dtype: str,
    device: Any = None,
    logit_size: float = 0.0,
    baseline: Function | None = None,
    jit_reference: bool = False,
) -> GradientCheck:
    """The candidate's gradients in ``dtype`` against the reference's in float64, on the same (rounded) inputs.

    ``inputs`` are float64 NumPy q, k (..., T, H, L), v (..., T, H, D), already rounded to ``dtype``;
    ``weights`` (..., T, H, D) the read-out. For a 16-bit ``dtype`` the bound is set by ``baseline``
    (latte-ref's own form) run in that dtype (:func:`~latte_ref.testing.tolerance.grad_tolerance`).
    A backward that raises is a failed check, with a note; a reference that raises is an error.
    ``jit_reference`` compiles the reference whole on JAX (see :func:`gradients`); the candidate never is.
    """
    expected = gradients(backend, reference, inputs, weights, dtype="float64", device=device, jit=jit_reference)
    baseline_error = None
    if dtype not in GRAD_TOLERANCES:
        if baseline is None:
            raise ValueError(f"a {dtype} gradient needs a baseline to be judged against")
        own = gradients(backend, baseline, inputs, weights, dtype=dtype, device=device)
        baseline_error = gradient_error(own, expected)[0]
    bound, rule = grad_tolerance(dtype, logit_size, baseline_error)
    try:
        actual = gradients(backend, candidate, inputs, weights, dtype=dtype, device=device)
    except Exception as exc:  # a crash in the backward is a failed case, not a failed suite
        note = f"the gradient raised {describe_exception(exc, backend.name)}"
        return GradientCheck(float("inf"), bound, rule, note=note, traceback="".join(traceback.format_exception(exc)))
    error, worst = gradient_error(actual, expected)
    return GradientCheck(error, bound, rule, worst, actual=actual, expected=expected)
