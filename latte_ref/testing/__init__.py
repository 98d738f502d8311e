"""Check another Latte implementation against latte-ref: a conformance suite in one call.

:func:`validate` runs a candidate (a kernel, a port, a model's attention) through
edge shapes, adversarial logits, padding, carried state, long and packed sequences, and
compares each output with the float64 reference under a written-down tolerance
model (:mod:`latte_ref.testing.tolerance`). ``latte-ref validate`` and the pytest
plugin (``pytest --latte-impl pkg.module:function``) run the same suite.

It is also the project's one testing toolkit, which the test suite, ``latte-ref check``
and ``latte-ref validate`` share: the case type and the backend x device x dtype matrix
(:mod:`~latte_ref.testing.matrix`), random inputs (:mod:`~latte_ref.testing.inputs`), the
one tolerance table and error metric (:mod:`~latte_ref.testing.tolerance`), gradients through
torch and jax autograd (:mod:`~latte_ref.testing.gradients`), and independent
implementations to check against (:mod:`~latte_ref.testing.references`).

This subpackage is part of the core: it sees arrays only through
:mod:`latte_ref.backends` and the Array API, but where a framework's autograd is the point
(:mod:`~latte_ref.testing.gradients`, like the references): there it imports torch or jax
inside the functions, so that importing it imports neither.
"""

from __future__ import annotations

from .candidate import CandidateError, UsageError
from .cases import FORMS, ValidationCase, case_names, generate_cases, make_case, packed_names, skipped_cases
from .inputs import random_qkv
from .matrix import Case, matrix
from .references import gated_linear_attention
from .report import CaseResult, Report, ValidationError
from .tolerance import FIXED_TOLERANCES, LOW_PRECISION_FACTOR, TOLERANCES, Tolerance, errors, relative_error
from .validate import assert_matches_reference, load_candidate, validate

__all__ = [
    "FIXED_TOLERANCES",
    "FORMS",
    "LOW_PRECISION_FACTOR",
    "TOLERANCES",
    "CandidateError",
    "Case",
    "CaseResult",
    "Report",
    "Tolerance",
    "UsageError",
    "ValidationCase",
    "ValidationError",
    "assert_matches_reference",
    "case_names",
    "errors",
    "gated_linear_attention",
    "generate_cases",
    "load_candidate",
    "make_case",
    "matrix",
    "packed_names",
    "random_qkv",
    "relative_error",
    "skipped_cases",
    "validate",
]
