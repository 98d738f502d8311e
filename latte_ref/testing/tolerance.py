"""The tolerance model: how far a correct implementation may be from the float64 reference.

Two metrics per case, both against the float64 reference evaluated on the *same*
inputs as the candidate saw them (rounded to its dtype), so input rounding is never
counted as the candidate's error:

    relative RMS   ||y - y_ref||_2 / ||y_ref||_2
    max abs        max |y - y_ref|, compared with a bound times max |v|

Latte's output is a convex combination of values (every p(s | t) is a probability),
so max |v| bounds |y| and is the natural scale of an absolute error.

The bounds come from :data:`TOLERANCES`, the one table of the project: the test suite,
``latte-ref check`` and this validation read it, each against its own scale of the
output (``max |reference|`` for latte-ref's own forms, ``max |v|`` for a candidate).
It holds, for every dtype, the tightest bound any of them used before they shared it.

float64 and float32 have fixed bounds. Rounding in a correct implementation grows
with the log-sum-exp ranges and the sequence length, not with the data's origin:
in float32 (unit roundoff u = 6e-8) an exponential of a shifted logit of size 10
carries ~10u relative error and a sum over 4096 tokens another ~sqrt(4096)·u, so
~1e-6 relative RMS is what careful kernels reach and 1e-5 (2e-5 on the max) leaves
room for log-space or reordered sums; a real bug (a leaked token, a wrong normaliser,
a perturbation of 1e-3) is orders above. The float64 bounds are 1e-12, four orders
above float64 rounding and five below float32 rounding, so a float64 request
computed in float32 cannot pass.

Both bounds grow with the logits' magnitude M = max(|q|, |k|) beyond
:data:`LOGIT_SCALE`: a logit of size M is itself only known to u·M, so a correct
implementation that forms ``exp(k - c)`` with ``c`` a log-normaliser rather than a
nearby key (log-space or gated forms) loses ~u·M relative accuracy in every weight.
The bound is multiplied by max(1, M / LOGIT_SCALE).

float16 and bfloat16 are judged relative to a baseline: the error, against float64,
of latte-ref itself run at the same precision on the same backend (which computes
in float32 and rounds the result). A candidate may be at most
:data:`LOW_PRECISION_FACTOR` times that error, floored at one unit roundoff so that
a baseline that happens to be exact does not demand exactness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FIXED_TOLERANCES",
    "GRAD_TOLERANCES",
    "LOGIT_SCALE",
    "LOW_PRECISION_FACTOR",
    "NOT_RUN",
    "TOLERANCES",
    "UNIT_ROUNDOFF",
    "Tolerance",
    "errors",
    "fixed_tolerance",
    "grad_tolerance",
    "relative_error",
    "relative_to_baseline",
    "within",
]

TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-12, 1e-12),
    "float32": (1e-5, 2e-5),
    "float16": (2e-3, 2e-2),
    "bfloat16": (1.6e-2, 1e-1),
}
"""dtype -> (relative RMS bound, max-abs bound as a multiple of the output's scale): the one table.

16-bit inputs are computed in float32 and only rounded on output, so their bounds are
about one output ulp. Where the test suite, ``latte-ref check`` and validation had
different bounds, each entry is the tightest of them.
"""

FIXED_TOLERANCES: dict[str, tuple[float, float]] = {dtype: TOLERANCES[dtype] for dtype in ("float64", "float32")}
"""The dtypes a candidate is held to fixed bounds in (scale: max |v|); 16-bit ones are judged against a baseline."""

GRAD_TOLERANCES: dict[str, float] = {"float64": 1e-9, "float32": 1e-4}
"""dtype -> bound on a gradient's error (:func:`latte_ref.testing.gradients.gradient_error`: max abs over max |g_ref|).

Gradients carry more rounding than the output (the backward pass differences the softmaxes'
exponentials once more, and sums over every later token), so the bounds are looser than the
forward ones, and still far below what a wrong backward gives (a gradient of k missing, or
scaled by 1.01: 1e-2 and more). float64: 1e-9, as the test suite has always held the forms'
gradients to (measured: below 2e-15); float32: 1e-4 (measured: below 1e-6). 16-bit gradients are judged
against latte-ref's own at that precision, as their outputs are; both bounds grow with the
logits as the forward ones do (:func:`grad_tolerance`).
"""

LOGIT_SCALE = 16.0
"""Logit magnitude up to which the fixed bounds apply unscaled."""

LOW_PRECISION_FACTOR = 8.0
"""A 16-bit candidate may be this many times less accurate than latte-ref at the same precision."""

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


@dataclass(frozen=True)
class Tolerance:
    """Bounds for one case: relative RMS and max abs (absolute, already scaled)."""

    rel_rms: float
    max_abs: float
    rule: str

    def passes(self, rel_rms: float, max_abs: float) -> bool:
        return bool(rel_rms <= self.rel_rms and max_abs <= self.max_abs)

    def ratio(self, rel_rms: float, max_abs: float) -> float:
        """How far past its bound the worse metric is (> 1 fails)."""
        return max(rel_rms / self.rel_rms, max_abs / self.max_abs)

    def __str__(self) -> str:
        return f"rms<={self.rel_rms:.1e} max<={self.max_abs:.1e}"


NOT_RUN = Tolerance(float("nan"), float("nan"), "not run")
"""The tolerance of a skipped case's row: no bound, since nothing was compared."""


def errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """``(max abs error, relative RMS error)``; ``inf`` for non-finite or mis-shaped output.

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref.testing.tolerance import errors
    >>> errors(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    (0.5, 0.1856953381770519)
    """
    if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return float("inf"), float("inf")
    diff = actual - expected
    max_abs = float(np.max(np.abs(diff), initial=0.0))
    reference_norm = float(np.linalg.norm(expected.ravel()))
    if reference_norm == 0.0:  # e.g. everything padded: any error is infinitely relative
        return max_abs, 0.0 if max_abs == 0.0 else float("inf")
    return max_abs, float(np.linalg.norm(diff.ravel())) / reference_norm


def relative_error(actual: np.ndarray, expected: np.ndarray, scale: float | None = None) -> float:
    """The max-abs error of :func:`errors` over ``scale`` (``max |expected|`` when omitted).

    Examples
    --------
    >>> import numpy as np
    >>> from latte_ref.testing.tolerance import relative_error
    >>> relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    0.2
    """
    if scale is None:
        scale = float(np.max(np.abs(expected), initial=0.0))
    max_abs, _ = errors(np.asarray(actual), np.asarray(expected))
    return max_abs / max(scale, 1e-30)


def within(dtype: str, actual: np.ndarray, expected: np.ndarray) -> tuple[bool, float, float]:
    """Whether ``actual`` meets the bounds of :data:`TOLERANCES` for ``dtype``, scaled by ``max |expected|``.

    Returns ``(passed, max_abs, rel_rms)``; a non-finite or mis-shaped output fails.
    """
    max_abs, rel_rms = errors(actual, expected)
    rms_bound, max_bound = TOLERANCES[dtype]
    scale = float(np.max(np.abs(expected), initial=0.0))
    return bool(rel_rms <= rms_bound and max_abs <= max_bound * scale), max_abs, rel_rms


def fixed_tolerance(dtype: str, value_scale: float, logit_scale: float = 0.0) -> Tolerance:
    """The bound for float64 or float32: max abs scaled by ``value_scale`` = max |v|, both by the logits' size."""
    rel_rms, max_abs = FIXED_TOLERANCES[dtype]
    growth = max(1.0, logit_scale / LOGIT_SCALE)
    return Tolerance(rel_rms * growth, max_abs * growth * max(value_scale, 1e-30), f"fixed {dtype}")


def relative_to_baseline(dtype: str, baseline_rel_rms: float, baseline_max_abs: float, value_scale: float) -> Tolerance:
    """The bound for float16 / bfloat16: :data:`LOW_PRECISION_FACTOR` x the baseline's errors, floored at u."""
    u = UNIT_ROUNDOFF[dtype]
    return Tolerance(
        LOW_PRECISION_FACTOR * max(baseline_rel_rms, u),
        LOW_PRECISION_FACTOR * max(baseline_max_abs, u * value_scale),
        f"{LOW_PRECISION_FACTOR:g}x latte-ref in {dtype}",
    )


def grad_tolerance(dtype: str, logit_scale: float = 0.0, baseline: float | None = None) -> tuple[float, str]:
    """``(bound, rule)`` for a gradient's error: :data:`GRAD_TOLERANCES` for float64 and float32, grown with the
    logits' size like :func:`fixed_tolerance`; for 16-bit dtypes :data:`LOW_PRECISION_FACTOR` x ``baseline``
    (latte-ref's own gradient error at that precision), floored at the unit roundoff.

    Examples
    --------
    >>> from latte_ref.testing.tolerance import grad_tolerance
    >>> grad_tolerance("float64")
    (1e-09, 'fixed float64')
    >>> grad_tolerance("float16", baseline=1e-3)
    (0.008, '8x latte-ref in float16')
    """
    if dtype in GRAD_TOLERANCES:
        return GRAD_TOLERANCES[dtype] * max(1.0, logit_scale / LOGIT_SCALE), f"fixed {dtype}"
    if baseline is None:
        raise ValueError(f"a {dtype} gradient is judged against a baseline: pass latte-ref's own error")
    return LOW_PRECISION_FACTOR * max(baseline, UNIT_ROUNDOFF[dtype]), f"{LOW_PRECISION_FACTOR:g}x latte-ref in {dtype}"
