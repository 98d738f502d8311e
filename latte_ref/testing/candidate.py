"""The candidate of :func:`latte_ref.testing.validate`: loading it by name, calling it by its form's contract, and
saying where and why it raised.

A name that does not resolve is a usage error (:class:`UsageError`, exit status 2 on the
command line), never a failed case: status 1 means only "the candidate disagrees". A
candidate that raises is a failed case, described by its exception and the line of the
candidate's own code that raised it, with a hint when its code looks written for another
backend than the one whose arrays it was given.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import os
import sys
import sysconfig
import traceback
import types
from collections.abc import Callable
from typing import Any

from .. import backends

__all__ = [
    "CandidateError",
    "UsageError",
    "call_candidate",
    "describe_exception",
    "load_candidate",
    "other_backend_hint",
    "other_layout_hint",
]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Installed libraries and the standard library: frames there are not the candidate's own code.
_LIBRARY_DIRS = tuple(
    {os.path.abspath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib", "stdlib", "platstdlib")}
)


class UsageError(ValueError):
    """The validator was asked something it cannot do (a bad argument); not a verdict on the candidate."""


class CandidateError(UsageError):
    """The candidate's name does not resolve: no such module or attribute, or not callable."""


def load_candidate(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (``function`` may be dotted: ``Class.method``).

    The current directory is importable, as it is for ``python -m``.

    Raises
    ------
    CandidateError
        With one line naming what was not found: the module, the attribute, or what is not callable.

    Examples
    --------
    >>> from latte_ref.testing import load_candidate
    >>> load_candidate("latte_ref:causal").__name__
    'causal'
    >>> load_candidate("latte_ref:casual")
    Traceback (most recent call last):
    ...
    latte_ref.testing.candidate.CandidateError: module 'latte_ref' has no attribute 'casual' (did you mean 'causal'?)
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CandidateError(f"expected MODULE:FUNCTION, e.g. mykernels.latte:causal, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CandidateError(
                f"no module named {exc.name!r} (looked in the current directory {os.getcwd()} and on sys.path)"
            ) from None
        raise CandidateError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    except Exception as exc:  # the candidate's module itself raised while importing
        raise CandidateError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    owner = module_name
    for part in attribute.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("__")], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            kind = "module" if isinstance(obj, types.ModuleType) else "object"
            raise CandidateError(f"{kind} {owner!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
        owner = f"{owner}.{part}"
    if not callable(obj):
        raise CandidateError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


def call_candidate(
    candidate: Callable[..., Any],
    form: str,
    q: Any,
    k: Any,
    v: Any,
    mask: Any,
    segment_ids: Any = None,
    *,
    cuts: tuple[int, ...] = (),
    layout: str = "BTHD",
    with_state: bool = False,
) -> Any:
    """The candidate's output for the whole sequence, in (..., T, H, D), following the form's contract.

    ``mask`` and ``segment_ids`` (..., T) are passed only when given, cut along T like q, k, v.
    """
    xp = backends.backend_of(q).namespace()
    if form == "step":
        return _scan_steps(candidate, xp, q, k, v, mask)
    bounds = [0, *cuts, q.shape[-3]]
    outputs = []
    state = None
    for start, stop in itertools.pairwise(bounds):
        pieces = [_to_layout(xp, a[..., start:stop, :, :], layout) for a in (q, k, v)]
        kwargs: dict[str, Any] = {}
        if mask is not None:
            kwargs["mask"] = mask[..., start:stop]
        if segment_ids is not None:
            kwargs["segment_ids"] = segment_ids[..., start:stop]
        if with_state and form == "causal":
            y, state = candidate(*pieces, state=state, return_state=True, **kwargs)
        else:
            y = candidate(*pieces, **kwargs)
        outputs.append(_to_layout(xp, y, layout))
    return outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=-3)


def _scan_steps(candidate: Callable[..., Any], xp: Any, q: Any, k: Any, v: Any, mask: Any) -> Any:
    state = None
    outputs = []
    for t in range(q.shape[-3]):
        kwargs = {} if mask is None else {"mask_t": mask[..., t]}
        y_t, state = candidate(q[..., t, :, :], k[..., t, :, :], v[..., t, :, :], state, **kwargs)
        outputs.append(y_t)
    return xp.stack(outputs, axis=-3)


def _to_layout(xp: Any, x: Any, layout: str) -> Any:
    """(..., T, H, X) <-> (..., H, T, X): the swap is its own inverse."""
    return x if layout == "BTHD" else xp.moveaxis(x, -3, -2)


def describe_exception(exc: BaseException, backend: str) -> str:
    """``Type: message at file:line``, the line being the innermost frame of the candidate's own code.

    Plus a hint when the code that raised refers to another backend's framework than ``backend``.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not _is_latte_ref(f.filename)]
    user = [f for f in own if not _is_library(f.filename)] or own
    where = f" at {_short(user[-1].filename)}:{user[-1].lineno}" if user else ""
    text = f"{type(exc).__name__}: {_one_line(exc)}{where}"
    hint = other_backend_hint(backend, _frameworks_named(exc) | _frameworks_with_attribute(exc))
    return f"{text}; {hint}" if hint else text


def other_backend_hint(backend: str, frameworks: set[str]) -> str:
    """A suggestion of ``--backend NAME`` when the candidate's arrays or code belong to another backend."""
    others = sorted(frameworks - {backend})
    if not others or backend in frameworks:
        return ""
    return f"its code looks written for {' or '.join(others)} arrays, not {backend}: try --backend {others[0]}"


def other_layout_hint(layout: str, passing: list[str]) -> str:
    """A suggestion of the other ``--layout`` when these failing cases pass with the T and H axes swapped."""
    other = "BHTD" if layout == "BTHD" else "BTHD"
    axes = "(..., H, T, L)" if other == "BHTD" else "(..., T, H, L)"
    cases = ", ".join(passing)
    return f"{cases} pass with the T and H axes swapped: its code looks written for {axes} arrays: try --layout {other}"


def backend_name_of(x: Any) -> str | None:
    """The :mod:`latte_ref.backends` name of ``x``'s array type, or None."""
    try:
        return backends.backend_of(x).name
    except TypeError:
        return None


def _frameworks_named(exc: BaseException) -> set[str]:
    """Backends whose framework the raising frames (outside latte-ref) use, by their globals and the message."""
    found = set()
    message = str(exc)
    for name in backends.BACKENDS:
        if name != "numpy" and f"{name}." in message:
            found.add(name)
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if not _is_latte_ref(frame.f_code.co_filename) and not _is_library(frame.f_code.co_filename):
            for value in frame.f_globals.values():
                if isinstance(value, types.ModuleType):
                    root = value.__name__.split(".")[0]
                    if root in backends.BACKENDS and root != "numpy":
                        found.add(root)
        tb = tb.tb_next
    return found


_ARRAY_TYPES = {"torch": ("torch", "Tensor"), "jax": ("jax", "Array"), "cupy": ("cupy", "ndarray")}
"""Where to look for a method the candidate called on an input array that does not have it."""


def _frameworks_with_attribute(exc: BaseException) -> set[str]:
    """For ``'numpy.ndarray' object has no attribute 'softmax'``: the backends whose arrays have it."""
    name, obj = getattr(exc, "name", None), getattr(exc, "obj", None)
    if not isinstance(exc, AttributeError) or name is None or backend_name_of(obj) is None:
        return set()
    found = set()
    for backend, (module, attribute) in _ARRAY_TYPES.items():
        if backends.get_backend(backend).unavailable_reason() is not None:
            continue  # not installed here: the suggestion could not be followed
        array_type = getattr(importlib.import_module(module), attribute, None)
        if array_type is not None and hasattr(array_type, name):
            found.add(backend)
    return found


def _is_latte_ref(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def _is_library(filename: str) -> bool:
    path = os.path.abspath(filename)
    return filename.startswith("<frozen") or any(path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def _short(filename: str) -> str:
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if relative.startswith("..") else relative


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
