"""``latte-ref check``: every form on every installed backend, device and dtype against the float64 definition.

The reference is :func:`latte_ref.definition` evaluated with NumPy in float64 on the
inputs *as the backend holds them* (rounded to its dtype), so the errors reported
are those of the computation, not of rounding the inputs.

On the backends with autograd (torch, jax), each form's float64 row also carries the error
of its gradient: d sum(y * w) / d(q, k, v), for a fixed random read-out w, against the same
gradient of the definition in float64 in the same framework, on inputs whose keys tie
exactly (:func:`make_grad_inputs`), where a backward through a max breaks.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import latte_ref
from latte_ref import backends
from latte_ref.testing.gradients import gradient_error, gradients, has_autograd, readout_weights
from latte_ref.testing.inputs import random_qkv, right_padded_mask
from latte_ref.testing.matrix import matrix
from latte_ref.testing.tolerance import GRAD_TOLERANCES, TOLERANCES, within

HELP = (
    "run every form on every installed backend, device and dtype against the float64 NumPy definition,"
    " and its float64 gradients on torch and jax"
)

# The relative RMS bound of each dtype (the one table of latte_ref.testing.tolerance); the max-abs bound
# there is relative to max |reference|. float64 and float32 sit far above the errors seen in practice
# (about 1e-16 and 1e-7); the 16-bit dtypes are computed in float32 and only rounded on output.
TOLERANCE = {dtype: rms for dtype, (rms, _) in TOLERANCES.items()}

GRAD_DTYPE = "float64"
"""The dtype whose rows carry a gradient error; its bound is :data:`GRAD_TOLERANCES` of it (max abs / max |g_ref|)."""

FORMS: dict[str, Callable[..., Any]] = {
    "bidirectional": lambda q, k, v, mask: latte_ref.bidirectional(q, k, v, mask=mask),
    "causal": lambda q, k, v, mask: latte_ref.causal(q, k, v, mask=mask),
    "recurrent": lambda q, k, v, mask: latte_ref.recurrent(q, k, v, mask=mask),
    "definition (causal)": lambda q, k, v, mask: latte_ref.definition(q, k, v, causal=True, mask=mask),
}


@dataclass
class Row:
    backend: str
    device: str
    dtype: str
    form: str
    max_abs_error: float
    rel_rms_error: float
    tolerance: float
    passed: bool
    seconds: float
    grad_error: float | None = None
    grad_tolerance: float | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--backend", action="append", type=backend_name, help="only this backend (repeatable)")
    parser.add_argument("--seq-len", type=int, default=41, help="tokens per sequence (default: 41, a prime)")


def backend_name(name: str) -> str:
    """A known backend's name, for argparse: an unknown one is a usage error with a "did you mean"."""
    try:
        return backends.get_backend(name).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def make_inputs(seq_len: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """q, k (2, T, 3, 4), v (2, T, 3, 8) and a mask whose second row is right-padded."""
    q, k, v = random_qkv(np.random.default_rng(seed), (2,), seq_len, 3, 4, 8, scale=2.0)
    return q, k, v, right_padded_mask([seq_len, (2 * seq_len) // 3], seq_len)


def make_grad_inputs(seq_len: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    """q, k (2, T, 3, 4), v and the read-out w (2, T, 3, 8), and the mask of :func:`make_inputs`, with tied keys.

    Row 0's keys lie on a 0.5 grid (seven values: every key ties with many others and with the
    running max); row 1's first third of keys are all 0.
    """
    rng = np.random.default_rng(seed)
    q, k, v = random_qkv(rng, (2,), seq_len, 3, 4, 8, scale=2.0)
    k[0] = np.clip(np.round(2.0 * k[0]) / 2.0, -1.5, 1.5)
    k[1, : seq_len // 3] = 0.0
    w = readout_weights(rng, v.shape)
    return q, k, v, w, right_padded_mask([seq_len, (2 * seq_len) // 3], seq_len)


def reference(form: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return latte_ref.definition(q, k, v, causal=form != "bidirectional", mask=mask)


def grad_check(
    backend: Any, device: Any, form: str, inputs: tuple[np.ndarray, ...], references: dict[bool, tuple[np.ndarray, ...]]
) -> float:
    """The float64 gradient error of ``form`` on the gradient inputs (:func:`make_grad_inputs`), max abs / max |g_ref|.

    The reference is the definition's gradient (causal or not), cached in ``references`` for this backend and device.
    """
    q, k, v, w, mask = inputs
    masks = backend.asarray(mask, dtype="bool", device=device)
    is_causal = form != "bidirectional"
    if is_causal not in references:
        definition = lambda q, k, v: latte_ref.definition(q, k, v, causal=is_causal, mask=masks)  # noqa: E731
        references[is_causal] = gradients(backend, definition, (q, k, v), w, dtype="float64", device=device, jit=True)
    if form == "definition (causal)":  # the reference itself: nothing to compare it with
        return 0.0
    function = lambda q, k, v: FORMS[form](q, k, v, masks)  # noqa: E731
    # Compiled whole on JAX (seconds, not one compilation per operation), but for the per-token loop,
    # which jax.jit would unroll: that one runs operation by operation.
    jit = form != "recurrent"
    actual = gradients(backend, function, (q, k, v), w, dtype="float64", device=device, jit=jit)
    return gradient_error(actual, references[is_causal])[0]


def check_one(
    backend: Any,
    device: Any,
    dtype: str,
    form: str,
    inputs: tuple[np.ndarray, ...],
    grad_inputs: tuple[np.ndarray, ...] | None = None,
    grad_references: dict[bool, tuple[np.ndarray, ...]] | None = None,
) -> Row:
    """One row: ``form`` on this backend, device and dtype; with ``grad_inputs`` (float64 rows), its gradient too."""
    q, k, v = (backend.asarray(a, dtype=dtype, device=device) for a in inputs[:3])
    mask = backend.asarray(inputs[3], dtype="bool", device=device)
    exact = [np.asarray(backend.to_numpy(a), dtype=np.float64) for a in (q, k, v)]
    expected = reference(form, exact[0], exact[1], exact[2], inputs[3])

    start = time.perf_counter()
    y = backend.synchronize(FORMS[form](q, k, v, mask))
    seconds = time.perf_counter() - start
    passed, max_abs, rel_rms = within(dtype, np.asarray(backend.to_numpy(y), dtype=np.float64), expected)
    row = Row(
        backend.name,
        str(device).replace("array_api_strict.", ""),
        dtype,
        form,
        max_abs,
        rel_rms,
        TOLERANCE[dtype],
        passed,
        seconds,
    )
    if grad_inputs is not None:
        row.grad_error = grad_check(
            backend, device, form, grad_inputs, {} if grad_references is None else grad_references
        )
        row.grad_tolerance = GRAD_TOLERANCES[GRAD_DTYPE]
        row.passed = row.passed and row.grad_error <= row.grad_tolerance
    return row


def run_checks(backend_names: list[str] | None = None, seq_len: int = 41) -> tuple[list[Row], dict[str, str]]:
    """All rows, and the reason each unavailable backend was skipped."""
    jax_backend = backends.get_backend("jax")
    if isinstance(jax_backend, backends.JaxBackend) and jax_backend.unavailable_reason() is None:
        jax_backend.enable_x64()  # float64 on JAX is an explicit opt-in
    inputs, grad_inputs = make_inputs(seq_len), make_grad_inputs(seq_len)
    rows, skipped = [], {}
    for entry in matrix(names=backend_names or None):
        if entry.unavailable is not None:
            skipped[entry.backend.name] = entry.unavailable
            continue
        assert entry.dtype_name is not None
        with_grad = has_autograd(entry.backend) and entry.dtype_name == GRAD_DTYPE
        references: dict[bool, tuple[np.ndarray, ...]] = {}  # the definition's gradients, causal and not
        for form in FORMS:
            grad = grad_inputs if with_grad else None
            rows.append(check_one(entry.backend, entry.device, entry.dtype_name, form, inputs, grad, references))
    return rows, skipped


def format_table(rows: list[Row]) -> str:
    header = f"{'backend':<17} {'device':<22} {'dtype':<9} {'form':<20} {'max abs err':>11} {'rel RMS err':>11} "
    header += f"{'tolerance':>9} {'grad err':>9} {'grad tol':>8} {'result':<6} {'time':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        grad_error = "-" if r.grad_error is None else f"{r.grad_error:.2e}"
        grad_tolerance = "-" if r.grad_tolerance is None else f"{r.grad_tolerance:.0e}"
        lines.append(
            f"{r.backend:<17} {r.device[:22]:<22} {r.dtype:<9} {r.form:<20} {r.max_abs_error:>11.2e} "
            f"{r.rel_rms_error:>11.2e} {r.tolerance:>9.0e} {grad_error:>9} {grad_tolerance:>8} "
            f"{'PASS' if r.passed else 'FAIL':<6} {r.seconds * 1e3:>6.1f}ms"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows, skipped = run_checks(args.backend, args.seq_len)
    print(f"latte-ref {latte_ref.__version__} check on {platform.platform()}, Python {platform.python_version()}")
    print(format_table(rows))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    failures = sum(not r.passed for r in rows)
    print("time: one call, including the first-call compilation of JAX and the graph of Dask")
    print("grad err: d sum(y * w) / d(q, k, v) against the definition's, max abs / max |g_ref|, on tied keys;")
    print(f"          {GRAD_DTYPE} rows of the backends with autograd (torch, jax) only, '-' elsewhere")
    print(f"{len(rows) - failures} passed, {failures} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [asdict(r) for r in rows], "skipped": skipped}, f, indent=2)
    return 1 if failures else 0
