"""The options of :func:`latte_ref.testing.validate` that adapt the suite to real code.

Real implementations scale their logits (``logit_scale``), assume a fixed number of batch
axes (``batch_axes``), and, on JAX, depend on the process-wide x64 flag; this module turns
each option into what the run does, and checks every argument before anything runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from .. import backends
from .candidate import UsageError
from .cases import FORMS, PACKED_FORMS, case_names
from .gradients import AUTOGRAD_BACKENDS, has_autograd

__all__ = [
    "BATCH_AXES",
    "LAYOUTS",
    "check_arguments",
    "fed_q_shape",
    "jax_x64_for",
    "resolve_logit_scale",
    "with_batch_axes",
]

LAYOUTS = ("BTHD", "BHTD")

BATCH_AXES = (0, 1, 2)
"""What ``batch_axes=`` may ask for; ``None`` feeds each case with its own batch axes."""


def resolve_logit_scale(logit_scale: float | str | None, n_latents: int) -> float:
    """The number ``s`` of Latte(s·q, s·k): 1 for None, 1/√L for ``"inv_sqrt_l"``, else the number itself."""
    if logit_scale is None:
        return 1.0
    if logit_scale == "inv_sqrt_l":
        return 1.0 / math.sqrt(n_latents)
    return float(logit_scale)


def fed_q_shape(shape: tuple[int, ...], axes: int | None) -> tuple[int, ...]:
    """The shape of q as the candidate receives it with ``axes`` batch axes."""
    if axes is None:
        return tuple(shape)
    flat = (math.prod(shape[:-3]), *shape[-3:])
    return flat[1:] if axes == 0 else flat if axes == 1 else (1, *flat)


def with_batch_axes(call: Callable[..., Any], arrays: tuple[Any, ...], axes: int | None) -> Any:
    """``call(q, k, v, *per_token)`` with the batch axes flattened to ``axes`` (0: one sequence per call), restored.

    ``arrays`` is q, k (..., T, H, L), v (..., T, H, D), then arrays of shape (..., T) or None
    (the mask, the segment ids), flattened alike.
    """
    q, k, v, *per_token = arrays
    if axes is None:
        return call(q, k, v, *per_token)
    xp = backends.backend_of(q).namespace()
    batch = tuple(q.shape[:-3])
    flat = [xp.reshape(a, (-1, *a.shape[-3:])) for a in (q, k, v)]
    flat_tokens = [None if a is None else xp.reshape(a, (-1, a.shape[-1])) for a in per_token]
    if axes == 0:
        ys = [call(*(a[i, ...] for a in flat), *(_row(a, i) for a in flat_tokens)) for i in range(flat[0].shape[0])]
        y = xp.stack(ys, axis=0)
    elif axes == 1:
        y = call(*flat, *flat_tokens)
    else:
        y = call(*(a[None, ...] for a in flat), *(_row(a, None) for a in flat_tokens))[0, ...]
    return xp.reshape(y, (*batch, *y.shape[-3:]))


def _row(tokens: Any, i: int | None) -> Any:
    """Row ``i`` of a (N, T) array, or all of it with a leading axis of 1 for None; None stays None."""
    if tokens is None:
        return None
    return tokens[None, ...] if i is None else tokens[i, ...]


@contextlib.contextmanager
def jax_x64_for(backend: backends.Backend, dtype: str) -> Iterator[None]:
    """JAX's x64 mode on for a float64 run and off otherwise, restored afterwards.

    With x64 on, JAX code that makes arrays of the default dtype returns float64 for float32
    inputs; with it off, float64 does not exist. So each run sets it for its own dtype, and one
    process can validate both.
    """
    if backend.name != "jax":
        yield
        return
    with backend.x64(dtype == "float64"):  # type: ignore[attr-defined]
        yield


def check_arguments(
    form: str,
    layout: str,
    backend: str,
    dtype: str,
    logit_scale: float | str | None,
    batch_axes: int | None,
    cases: list[str] | None,
    *,
    with_segments: bool = False,
    grad: bool = False,
) -> backends.Backend:
    """Every argument that can be checked before running, as a :class:`UsageError`; returns the backend."""
    if form not in FORMS:
        raise UsageError(f"form must be one of {', '.join(FORMS)}; got {form!r}")
    if with_segments and form not in PACKED_FORMS:
        raise UsageError(
            f"form {form!r} takes no segment_ids (a step has no time axis): validate the causal form with segments"
        )
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if batch_axes is not None and batch_axes not in BATCH_AXES:
        raise UsageError(f"batch_axes must be 0, 1 or 2; got {batch_axes!r}")
    if isinstance(logit_scale, str) and logit_scale != "inv_sqrt_l":
        try:
            float(logit_scale)
        except ValueError:
            raise UsageError(f"logit_scale must be a number or 'inv_sqrt_l'; got {logit_scale!r}") from None
    if logit_scale is not None and not resolve_logit_scale(logit_scale, 1) > 0:
        raise UsageError(f"logit_scale must be positive; got {logit_scale!r}")
    # Naming a case asks for it, whatever the flags.
    known = case_names(form, with_mask=True, with_state=True, with_segments=True, with_grad=True)
    unknown = [name for name in cases or () if name not in known]
    if unknown:
        raise UsageError(f"unknown case {unknown[0]!r} for form {form!r}; known: {', '.join(known)}")
    try:
        chosen = backends.get_backend(backend)
        chosen.require()
    except Exception as exc:
        raise UsageError(str(exc)) from None
    if dtype not in chosen.dtypes() and not (backend == "jax" and dtype == "float64"):
        raise UsageError(f"backend {backend!r} has no dtype {dtype!r}; it has {', '.join(chosen.dtypes())}")
    if grad and not has_autograd(chosen):
        raise UsageError(
            f"--grad compares gradients, and backend {backend!r} has no autograd: "
            f"use --backend {' or --backend '.join(AUTOGRAD_BACKENDS)}"
        )
    return chosen
