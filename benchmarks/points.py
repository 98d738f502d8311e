"""The measurements the targets compare, timed together: every function of one sequence length T, interleaved.

At each T of a backend, the GEMM floor, the forms (and, at the targets' T, their packed
rows) and standard attention are timed in the same rounds (see ``timing.py``), so that
a ratio of two of them is taken under one load. No form can be faster than its GEMM
floor, which does only the two products every form does: a form that measures faster
is timed again, group and all, and if it still is its row carries ``below_floor`` and
the targets built on it are "unreliable" rather than met or missed. Where a measurement is
taken in several passes of the run, the flag is set again on the fastest times it keeps
(:func:`mark_below_floor`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from measurements import form_fn, form_record, gemm_floor, softmax_attention, softmax_inputs
from timing import interleaved_times

from latte_ref import backends

__all__ = ["chunk_rows", "mark_below_floor", "point_rows"]


def point_rows(
    backend: backends.Backend,
    n_tokens: int,
    repeats: int,
    *,
    forms: tuple[str, ...] = ("bidirectional", "causal"),
    softmax: tuple[bool, ...] = (False, True),
    packed: int | None = None,
    memory: bool = True,
    spread: float = 0.0,
) -> list[dict[str, Any]]:
    """Floor, ``forms`` (and with ``packed``, their rows of that many packed documents) and softmax at T.

    Every function on inputs of its own, allocated now, in rounds spread over ``spread`` seconds
    (``timing.SPREAD_SECONDS``). A form timed faster than the floor has the group timed again.
    """
    errors: dict[str, str] = {}
    functions = _functions(backend, n_tokens, forms, softmax, packed)
    times = _times(functions, repeats, errors, spread)
    if _below_floor(times):  # a form faster than the products it is made of: a hiccup of the machine, once
        times = _times(functions, repeats, errors, spread)
    del functions

    rows: list[dict[str, Any]] = [{"kind": "floor", "backend": backend.name, "T": n_tokens, "seconds": times["floor"]}]
    for name, seconds in times.items():
        if name == "floor" or name.startswith("softmax"):
            continue
        form, _, is_packed = name.partition(" ")
        extra: dict[str, Any] = {"packed": packed} if is_packed else {}
        rows.append(form_record(backend, form, n_tokens, seconds, memory=memory and not is_packed, **extra))
    for is_causal in softmax:
        name = f"softmax {is_causal}"
        if name in times or name in errors:
            row = {"kind": "softmax", "backend": backend.name, "causal": is_causal, "T": n_tokens}
            row.update({"error": errors[name]} if name in errors else {"seconds": times[name]})
            rows.append(row)
    return mark_below_floor(rows)


def mark_below_floor(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``below_floor`` set on each form faster than the GEMM floor of its backend and T, and only there.

    The one check of :func:`point_rows`'s rows, and of those merged from several passes
    (``timing.fastest_rows``), where a form and its floor may each have kept another pass's time.
    """
    floors = {(r["backend"], r["T"]): r["seconds"] for r in rows if r.get("kind") == "floor" and "seconds" in r}
    out = []
    for row in rows:
        floor = floors.get((row.get("backend"), row.get("T")))
        row = {k: v for k, v in row.items() if k != "below_floor"}
        if row.get("kind") == "form" and floor is not None and row.get("seconds", floor) < floor:
            row["below_floor"] = True
        out.append(row)
    return out


def _functions(
    backend: backends.Backend, n_tokens: int, forms: tuple[str, ...], softmax: tuple[bool, ...], packed: int | None
) -> dict[str, tuple[Any, Callable[[], Any]]]:
    """The group's functions, each on inputs of its own, allocated now."""
    functions: dict[str, tuple[Any, Callable[[], Any]]] = {"floor": (backend, gemm_floor(backend, n_tokens))}
    for form in forms:
        functions[form] = (backend, form_fn(backend, form, n_tokens))
        if packed is not None:
            functions[f"{form} packed"] = (backend, form_fn(backend, form, n_tokens, packed=packed))
    for is_causal in softmax:
        attend = softmax_attention(backend.name, is_causal)
        if attend is not None:
            q, k, v = softmax_inputs(backend, n_tokens)
            functions[f"softmax {is_causal}"] = (backend, lambda a=attend, q=q, k=k, v=v: a(q, k, v))
    return functions


def chunk_rows(
    backend: backends.Backend, n_tokens: int, chunk_sizes: tuple[int, ...], repeats: int
) -> list[dict[str, Any]]:
    """The causal form at T for every chunk size, interleaved (only compared with one another)."""
    functions = {str(c): (backend, form_fn(backend, "causal", n_tokens, chunk_size=c)) for c in chunk_sizes}
    times = interleaved_times(functions, repeats)
    return [
        form_record(backend, "causal", n_tokens, times[str(c)], memory=False, chunk_size=c, sweep="chunk_size")
        for c in chunk_sizes
    ]


def _times(functions: dict[str, Any], repeats: int, errors: dict[str, str], spread: float) -> dict[str, float]:
    """Interleaved times; standard attention that runs out of memory is left out with its error, not fatal."""
    try:
        return interleaved_times({k: v for k, v in functions.items() if k not in errors}, repeats, spread=spread)
    except (MemoryError, RuntimeError) as exc:  # out of memory in the framework: retry without softmax
        for name in functions:
            if name.startswith("softmax"):
                errors[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
        if not errors:
            raise
        return interleaved_times({k: v for k, v in functions.items() if k not in errors}, repeats, spread=spread)


def _below_floor(times: dict[str, float]) -> set[str]:
    return {
        name for name, t in times.items() if name != "floor" and not name.startswith("softmax") and t < times["floor"]
    }
