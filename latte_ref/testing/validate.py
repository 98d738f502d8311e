"""Run a candidate Latte implementation through the conformance cases and report per case."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backends
from ..bidirectional import bidirectional
from ..causal import causal
from ..definition import definition
from .candidate import (
    UsageError,
    backend_name_of,
    call_candidate,
    describe_exception,
    load_candidate,
    other_backend_hint,
    other_layout_hint,
)
from .cases import ValidationCase, case_rng, generate_cases, make_case, skipped_cases
from .gradients import compare_gradients, readout_weights
from .options import LAYOUTS, check_arguments, fed_q_shape, jax_x64_for, resolve_logit_scale, with_batch_axes
from .report import CaseResult, Report, ValidationError, first_mismatch, reproduce_command, save_worst, shape_label
from .tolerance import FIXED_TOLERANCES, NOT_RUN, errors, fixed_tolerance, relative_to_baseline

__all__ = [
    "CaseResult",
    "Report",
    "UsageError",
    "ValidationError",
    "assert_matches_reference",
    "load_candidate",
    "run_case",
    "skipped_row",
    "validate",
]

DEFINITION_MAX_T = 256
"""Up to this length the reference is the O(T²) definition; beyond, the float64 fast forms (tested against it)."""

LAYOUT_RETRIES = 3
"""How many failing cases, the smallest, a failing run reruns in the other layout to look for a layout mix-up."""


def validate(
    candidate: Callable[..., Any] | str,
    *,
    form: str,
    backend: str = "numpy",
    device: Any = None,
    dtype: str = "float32",
    layout: str = "BTHD",
    with_mask: bool = False,
    with_state: bool = False,
    with_segments: bool = False,
    seed: int = 0,
    cases: list[str] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    logit_scale: float | str | None = None,
    batch_axes: int | None = None,
    grad: bool = False,
) -> Report:
    """Check a Latte implementation against the float64 reference on the conformance cases.

    Parameters
    ----------
    candidate : callable or str
        The implementation, or ``"package.module:function"``. By ``form``:

        - ``"bidirectional"``: ``candidate(q, k, v[, mask=mask][, segment_ids=segment_ids]) -> y``
        - ``"causal"``: the same; with ``with_state`` also
          ``candidate(q, k, v, state=state, return_state=True) -> (y, state)``, where
          ``state`` is ``None`` or what the previous call returned (any object); with
          ``segment_ids`` too, it is the history of the call's first document.
        - ``"step"``: ``candidate(q_t, k_t, v_t, state[, mask_t=mask_t]) -> (y_t, state)``,
          :func:`latte_ref.step`'s contract, scanned over the tokens from ``state=None``.

        q, k are (..., T, H, L) and v, y (..., T, H, D) (``"BHTD"``: (..., H, T, L/D));
        mask is bool (..., T), True for a real token; segment_ids is int32 (..., T), the
        document of each token of a packed row, never decreasing along T.
    form : {"bidirectional", "causal", "step"}
    backend, device, dtype : str
        Where the candidate's inputs live (a :mod:`latte_ref.backends` name, a device of it or
        its name, and a dtype name). The output must come back in the input dtype.
    layout : {"BTHD", "BHTD"}
        ``"BHTD"`` for head-first implementations; not used by ``"step"``.
    with_mask, with_state : bool
        Whether the candidate takes ``mask=`` (``mask_t=`` for steps), and, for ``"causal"``,
        ``state=`` / ``return_state=``. Each adds its cases.
    with_segments : bool
        Whether the candidate takes ``segment_ids=`` (``"causal"`` and ``"bidirectional"``):
        adds the packed cases (``packed_*``). Without it they are reported as skipped, with
        what they need; so is a packed case that needs ``mask=`` or ``state=`` too.
    seed : int
        Suite seed: every case is drawn from it and its name.
    cases : list of str, optional
        Only these cases (see :func:`latte_ref.testing.case_names`).
    save_dir : path, optional
        Where the worst failing case's inputs are written (by default the folder the environment
        variable ``LATTE_REF_SAVE_DIR`` names, else the system's temporary directory); nothing is
        written when every case passes.
    logit_scale : float or "inv_sqrt_l", optional
        For implementations that scale the logits: the reference becomes Latte(s·q, s·k, v),
        with ``s`` this number or, for ``"inv_sqrt_l"``, 1/√L (L the latents per head).
    batch_axes : {0, 1, 2}, optional
        Feed every case with exactly this many batch axes (the cases' batches are flattened
        into one axis, or given leading axes of size 1, or, for 0, run one sequence per call).
        By default each case keeps its own: 0, 1 or 2.
    grad : bool
        Also compare the gradients of ``sum(y * w)`` (w fixed and random) with respect to q, k
        and v with those of :func:`latte_ref.definition` in float64 in the same framework
        (torch or jax only), and add the tied-key cases (``tied_*``), where a backward through
        a max breaks.

    Raises
    ------
    UsageError
        (a ``ValueError``) for an argument that cannot run: an unknown form, layout, case,
        backend or dtype, a bad ``logit_scale`` or ``batch_axes``, or a candidate name that
        does not resolve, or ``grad`` on a backend without autograd. A candidate that raises is a
        failed case instead.

    Returns
    -------
    Report
        ``report.passed``, ``report.results`` (one row per case), ``report.worst``,
        ``report.worst_npz`` and ``report.reproduce`` (a command line; both None when every
        case passes), and ``report.layout_hint`` (``"... try --layout BHTD"`` when the smallest
        failing cases pass with the T and H axes swapped, else None; never tried on a pass).

    Examples
    --------
    >>> import latte_ref
    >>> from latte_ref.testing import validate
    >>> report = validate(latte_ref.causal, form="causal", cases=["t1", "t_prime_37"])
    >>> report.passed, [r.name for r in report.results]
    (True, ['t1', 't_prime_37'])
    """
    spec = candidate if isinstance(candidate, str) else _spec_of(candidate)
    function = load_candidate(candidate) if isinstance(candidate, str) else candidate
    chosen = check_arguments(
        form, layout, backend, dtype, logit_scale, batch_axes, cases, with_segments=with_segments, grad=grad
    )
    resolved_device = _resolve_device(chosen, device)
    settings = {
        "candidate": spec,
        "form": form,
        "backend": backend,
        "device": str(resolved_device if resolved_device is not None else chosen.devices()[0]),
        "dtype": dtype,
        "layout": layout,
        "with_mask": with_mask,
        "with_state": with_state,
        "with_segments": with_segments,
        "seed": seed,
        "logit_scale": logit_scale,
        "batch_axes": batch_axes,
        "grad": grad,
    }
    report = Report(settings)
    artifacts = {}
    with jax_x64_for(chosen, dtype):
        flags = {"with_mask": with_mask, "with_state": with_state, "with_segments": with_segments}
        suite = generate_cases(form, **flags, with_grad=grad, seed=seed, names=cases)
        for case in suite:
            result, arrays = run_case(
                function,
                case,
                form=form,
                backend=chosen,
                device=resolved_device,
                dtype=dtype,
                layout=layout,
                with_mask=with_mask,
                with_state=with_state,
                logit_scale=logit_scale,
                batch_axes=batch_axes,
                grad=grad,
            )
            report.results.append(result)
            artifacts[case.name] = arrays
        if not report.passed and form != "step":  # a passing run pays nothing for the hint
            options = {"form": form, "backend": chosen, "device": resolved_device, "dtype": dtype, "grad": False}
            options.update(with_mask=with_mask, with_state=with_state, logit_scale=logit_scale, batch_axes=batch_axes)
            report.layout_hint = _layout_hint(function, suite, report, layout, options)
    if cases is None:  # a case left out for want of an argument is a row saying so, never nothing
        skipped = skipped_cases(form, with_mask=with_mask, with_state=with_state, with_segments=with_segments)
        report.results += [skipped_row(make_case(n, form, seed=seed), why, batch_axes) for n, why in skipped.items()]
    worst = report.worst
    if worst is not None and not report.passed:  # a passing run leaves nothing behind
        report.worst_npz = save_worst(worst, artifacts[worst.name], settings, save_dir)
        report.reproduce = reproduce_command(settings, worst.name)
    return report


def assert_matches_reference(candidate: Callable[..., Any] | str, **kwargs: Any) -> Report:
    """:func:`validate`, raising :class:`ValidationError` (with the report as its message) unless every case passes.

    Examples
    --------
    >>> import latte_ref
    >>> from latte_ref.testing import assert_matches_reference
    >>> _ = assert_matches_reference(latte_ref.bidirectional, form="bidirectional", cases=["t1"])
    """
    report = validate(candidate, **kwargs)
    if not report.passed:
        raise ValidationError(report)
    return report


def run_case(
    candidate: Callable[..., Any],
    case: ValidationCase,
    *,
    form: str,
    backend: backends.Backend,
    device: Any,
    dtype: str,
    layout: str = "BTHD",
    with_mask: bool = False,
    with_state: bool = False,
    logit_scale: float | str | None = None,
    batch_axes: int | None = None,
    grad: bool = False,
) -> tuple[CaseResult, dict[str, np.ndarray]]:
    """Run one case; returns its row and the arrays to save should it be the worst (with ``grad``, its gradients)."""
    q, k, v = (backend.asarray(a, dtype=dtype, device=device) for a in (case.q, case.k, case.v))
    mask = None if case.mask is None else backend.asarray(case.mask, dtype="bool", device=device)
    ids = None if case.segment_ids is None else backend.asarray(case.segment_ids, dtype="int32", device=device)
    seen = tuple(_numpy(backend, a) for a in (q, k, v))  # the inputs as rounded to the dtype
    scale = resolve_logit_scale(logit_scale, case.q.shape[-1])
    scaled_q, scaled_k = seen[0] * scale, seen[1] * scale
    expected = reference(case, scaled_q, scaled_k, seen[2], form=form)
    value_scale = float(np.max(np.abs(seen[2]), initial=0.0))
    arrays = {"q": seen[0], "k": seen[1], "v": seen[2], "expected": expected}
    if case.mask is not None:
        arrays["mask"] = case.mask
    if case.segment_ids is not None:
        arrays["segment_ids"] = case.segment_ids
    if dtype in FIXED_TOLERANCES:
        logit_size = max(float(np.max(np.abs(a), initial=0.0)) for a in (scaled_q, scaled_k))
        tolerance = fixed_tolerance(dtype, value_scale, logit_size)
    else:
        baseline = _numpy(backend, _latte_ref_form(form)(q * scale, k * scale, v, mask, ids))
        b_max_abs, b_rel_rms = errors(baseline, expected)
        tolerance = relative_to_baseline(dtype, b_rel_rms, b_max_abs, value_scale)
    fed_shape = fed_q_shape(case.q.shape, batch_axes)

    def row(max_abs: float, rel_rms: float, note: str = "", **extra: Any) -> CaseResult:
        passed = not note and tolerance.passes(rel_rms, max_abs)
        label = shape_label(fed_shape, case.v.shape[-1])
        result = CaseResult(case.name, label, max_abs, rel_rms, tolerance, passed, note, case.description, **extra)
        result.segments = case.segments
        return result

    def run(q: Any, k: Any, v: Any) -> Any:
        """The candidate's output (..., T, H, D) on this case, fed as ``batch_axes`` asks."""

        def call(*qkvm: Any) -> Any:
            return call_candidate(candidate, form, *qkvm, cuts=case.cuts, layout=layout, with_state=with_state)

        return with_batch_axes(call, (q, k, v, mask, ids), batch_axes)

    try:
        y = run(q, k, v)
    except Exception as exc:  # a crash is a failed case, not a failed suite
        note = f"raised {describe_exception(exc, backend.name)}"
        return row(float("inf"), float("inf"), note, traceback="".join(traceback.format_exception(exc))), arrays
    note = ""
    returned_by = backend_name_of(y)
    if returned_by != backend.name:
        hint = other_backend_hint(backend.name, {returned_by} if returned_by else set())
        note = f"returned a {type(y).__module__}.{type(y).__name__}, not a {backend.name} array" + (
            f"; {hint}" if hint else ""
        )
        return row(float("inf"), float("inf"), note), arrays
    if str(getattr(y, "dtype", None)) != str(q.dtype):
        note = f"returned dtype {getattr(y, 'dtype', type(y))}, expected {q.dtype}"
    actual = _numpy(backend, y)
    arrays["actual"] = actual
    if actual.shape != expected.shape:
        return row(float("inf"), float("inf"), f"returned shape {actual.shape}, expected {expected.shape}"), arrays
    max_abs, rel_rms = errors(actual, expected)
    if not np.all(np.isfinite(actual)):
        note = note or "non-finite output"
    mismatch = None
    if note or not tolerance.passes(rel_rms, max_abs):
        mismatch = first_mismatch(actual, expected, tolerance.max_abs, segment_ids=case.segment_ids)
    result = row(max_abs, rel_rms, note, first_mismatch=mismatch)
    if grad:
        ref = _latte_ref_form(form, exact=case.n_tokens <= DEFINITION_MAX_T)
        weights = readout_weights(case_rng(case.seed, f"{case.name}:w"), case.v.shape)
        check = compare_gradients(
            backend,
            run,
            lambda q, k, v: ref(q * scale, k * scale, v, mask, ids),
            seen,
            weights,
            dtype=dtype,
            device=device,
            logit_size=max(float(np.max(np.abs(a), initial=0.0)) for a in (scaled_q, scaled_k)),
            baseline=lambda q, k, v: _latte_ref_form(form)(q * scale, k * scale, v, mask, ids),
            jit_reference=case.n_tokens <= DEFINITION_MAX_T,  # the definition compiles in seconds on JAX
        )
        result.add_gradients(check.error, check.bound, check.worst, check.note, check.traceback)
        arrays.update({f"{n}_expected": g for n, g in zip(("dq", "dk", "dv"), check.expected, strict=False)})
        arrays.update({f"{n}_actual": g for n, g in zip(("dq", "dk", "dv"), check.actual, strict=False)})
    return result, arrays


def _layout_hint(
    candidate: Callable[..., Any], suite: list[ValidationCase], report: Report, layout: str, options: dict[str, Any]
) -> str | None:
    """``try --layout X`` when the smallest cases whose output failed all pass with the T and H axes swapped.

    A (..., T, H, L) kernel fed (..., H, T, L) reads H tokens of T heads, and fails every case
    but by chance; fed its own layout, a correct one passes. The gradients are not rerun.
    """
    forward_failed = {r.name for r in report.run if r.note or not r.tolerance.passes(r.rel_rms, r.max_abs)}
    retried = sorted((c for c in suite if c.name in forward_failed), key=lambda c: c.q.size)[:LAYOUT_RETRIES]
    other = next(name for name in LAYOUTS if name != layout)
    if not retried or not all(run_case(candidate, c, layout=other, **options)[0].passed for c in retried):
        return None
    return other_layout_hint(layout, [c.name for c in retried])


def skipped_row(case: ValidationCase, why: str, batch_axes: int | None = None) -> CaseResult:
    """The report's row for a case that did not run, and why (what the candidate would have to take)."""
    label = shape_label(fed_q_shape(case.q.shape, batch_axes), case.v.shape[-1])
    nan = float("nan")
    return CaseResult(
        case.name, label, nan, nan, NOT_RUN, False, "", case.description, segments=case.segments, skipped=why
    )


def reference(case: ValidationCase, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, form: str) -> np.ndarray:
    """The float64 answer for these (already rounded) inputs: the definition for short sequences.

    Packed cases pass their ``segment_ids`` (..., T), uncut: the reference sees whole rows.
    """
    is_causal = form != "bidirectional"
    mask, ids = case.mask, case.segment_ids
    if case.n_tokens <= DEFINITION_MAX_T:
        return np.asarray(definition(q, k, v, causal=is_causal, mask=mask, segment_ids=ids))
    if is_causal:
        return np.asarray(causal(q, k, v, mask=mask, segment_ids=ids))
    return np.asarray(bidirectional(q, k, v, mask=mask, segment_ids=ids))


def _latte_ref_form(form: str, *, exact: bool = False) -> Callable[[Any, Any, Any, Any, Any], Any]:
    """latte-ref's fast form for ``form`` as ``f(q, k, v, mask, segment_ids)``; with ``exact``, the definition."""
    if exact:
        is_causal = form != "bidirectional"
        return lambda q, k, v, mask, ids: definition(q, k, v, causal=is_causal, mask=mask, segment_ids=ids)
    if form == "bidirectional":
        return lambda q, k, v, mask, ids: bidirectional(q, k, v, mask=mask, segment_ids=ids)
    return lambda q, k, v, mask, ids: causal(q, k, v, mask=mask, segment_ids=ids)


def _numpy(backend: backends.Backend, x: Any) -> np.ndarray:
    out = backend.to_numpy(x)
    return out if out.dtype == bool else np.asarray(out, dtype=np.float64)


def _resolve_device(backend: backends.Backend, device: Any) -> Any:
    """A device object of the backend for a device or its name (``"cuda"``, ``"cpu"``, ``"cuda:0"``)."""
    if device is None or not isinstance(device, str):
        return device
    for d in backend.devices():
        if str(d) == device:
            return d
    for d in backend.devices():  # "cuda" for "cuda:0", "gpu" for a JAX "cuda:0" device, ...
        if str(d).lower().startswith(device.lower()) or device.lower() in str(getattr(d, "platform", "")):
            return d
    return device


def _spec_of(candidate: Callable[..., Any]) -> str:
    module = getattr(candidate, "__module__", None)
    name = getattr(candidate, "__qualname__", None)
    if module and name and "<" not in name and module != "__main__":
        return f"{module}:{name}"
    short = getattr(candidate, "__name__", None)  # a local function keeps its name: artefacts stay apart
    return f"MODULE:{short if short and '<' not in short else 'FUNCTION'}"
