"""Layouts of q, k, v and grouped-query K/V heads: what the forms accept beyond (..., T, H, L).

Two layouts, named as :func:`latte_ref.testing.validate` names them:

    "BTHD"  q, k (..., T, H, L), v and y (..., T, H, D): time-major, the default
    "BHTD"  q, k (..., H, T, L), v and y (..., H, T, D): head-first, as torch's SDPA and most kernels

The forms compute in "BTHD"; a "BHTD" input is a transposed view of it, and the output is
transposed back. A state (..., H, L[, D]) and a mask (..., T) have no axis to swap.

K/V heads may be fewer than query heads (grouped-query attention): with H_kv heads for k and v
and H for q, g = H / H_kv and query head h reads K/V head h // g, as torch's
``scaled_dot_product_attention(enable_gqa=True)``. Nothing here knows a framework.
"""

from __future__ import annotations

from typing import Any

from ._array import Array

__all__ = ["LAYOUTS", "check_layout", "explain_layout", "repeat_kv_heads", "swap_time_and_heads", "time_major"]

LAYOUTS = ("BTHD", "BHTD")
"""The layouts of q, k, v and y: time-major (the default) and head-first."""


def check_layout(layout: object) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`; a one-line ``ValueError`` naming ``layout`` otherwise."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be 'BTHD' (..., T, H, L) or 'BHTD' (..., H, T, L), got {layout!r}")
    return layout


def time_major(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A (..., T, H, F) shape read in ``layout``: axes -3 and -2 swapped for "BHTD"."""
    if layout == "BTHD" or len(shape) < 3:
        return tuple(shape)
    return (*shape[:-3], shape[-2], shape[-3], shape[-1])


def swap_time_and_heads(xp: Any, x: Array, layout: str) -> Array:
    """x (..., T, H, F) <-> (..., H, T, F) for "BHTD" (a view where the library makes one); x itself for "BTHD"."""
    if layout == "BTHD":
        return x
    axes = list(range(x.ndim))
    axes[-3], axes[-2] = axes[-2], axes[-3]
    return xp.permute_dims(x, tuple(axes))


def repeat_kv_heads(xp: Any, k: Array, v: Array, n_heads: int) -> tuple[Array, Array]:
    """k (..., H_kv, L), v (..., H_kv, D) -> (..., H, L), (..., H, D): K/V head j serves query heads jg .. jg+g-1.

    g = H / H_kv (checked by the caller). For g = 1 the arrays themselves, uncopied; otherwise a
    broadcast view (..., H_kv, g, F) is reshaped, which copies only where the library must.
    """
    n_kv = k.shape[-2]
    if n_kv == n_heads:
        return k, v
    group = n_heads // n_kv

    def repeated(a: Array) -> Array:
        spread = xp.broadcast_to(xp.expand_dims(a, axis=-2), (*a.shape[:-1], group, a.shape[-1]))
        return xp.reshape(spread, (*a.shape[:-2], n_heads, a.shape[-1]))

    return repeated(k), repeated(v)


def _shape(a: object) -> tuple[int, ...] | None:
    shape = getattr(a, "shape", None)
    return None if shape is None else tuple(shape)


def _fits(shapes: dict[str, tuple[int, ...] | None], layout: str, *, cross: bool) -> bool:
    """Whether the shapes of q, k, v (and of mask, key_mask, segment_ids, state) agree, read in ``layout``.

    No stricter than the checks that follow (``check_qkv``, ``check_mask``, ``check_segment_ids``,
    ``check_state``): shapes that fit here may still fail there, never the other way round.
    """
    q, k, v = (shapes[name] for name in ("q", "k", "v"))
    if q is None or k is None or v is None or min(len(q), len(k), len(v)) < 3:
        return False
    (*bq, tq, hq, lq), (*bk, tk, hk, lk), (*bv, tv, hv, _) = (time_major(s, layout) for s in (q, k, v))
    fits = bq == bk == bv and lq == lk and (tk, hk) == (tv, hv) and (hk == hq or (hk > 0 and hq % hk == 0))
    fits = fits and (cross or tq == tk)
    for name, expected in (
        ("mask", (*bq, tq)),
        ("segment_ids", (*bq, tq)),
        ("key_mask", (*bk, tk)),
        ("state", (*bq, hq, lq)),
    ):
        given = shapes.get(name)
        fits = fits and (given is None or given == expected)
    return fits


def explain_layout(
    q: Array,
    k: Array,
    v: Array,
    layout: str,
    *,
    cross: bool = False,
    names: tuple[str, str, str] = ("q", "k", "v"),
    **others: Array | None,
) -> None:
    """A ``ValueError`` naming ``layout=`` when the shapes disagree in ``layout`` and a transpose explains it.

    Either all the arrays fit the other layout (pass it), or one of q, k, v fits once its T and H
    axes are swapped (that one is transposed). Shapes that fit ``layout``, or that no transpose
    mends, pass through: the usual checks accept them or say what is wrong. ``others``: mask,
    key_mask, segment_ids (their shapes) and state (its running max's shape).
    """
    shapes = {"q": _shape(q), "k": _shape(k), "v": _shape(v)}
    state = others.pop("state", None)
    shapes["state"] = None if state is None else _shape(getattr(state, "running_max", None))
    shapes.update({name: _shape(a) for name, a in others.items() if a is not None})
    if _fits(shapes, layout, cross=cross):
        return
    given = ", ".join(
        f"{names[i] if i < 3 else name} {shape}" for i, (name, shape) in enumerate(shapes.items()) if shape
    )
    other = LAYOUTS[1 - LAYOUTS.index(layout)]
    pattern = {"BTHD": "(..., T, H, L/D)", "BHTD": "(..., H, T, L/D)"}
    if _fits(shapes, other, cross=cross):
        raise ValueError(
            f"the shapes ({given}) do not fit layout={layout!r} {pattern[layout]} but fit layout={other!r}"
            f" {pattern[other]}: pass layout={other!r}"
        )
    for i, name in enumerate(("q", "k", "v")):
        shape = shapes[name]
        if (
            shape is not None
            and len(shape) >= 3
            and _fits({**shapes, name: time_major(shape, "BHTD")}, layout, cross=cross)
        ):
            raise ValueError(
                f"{names[i]} looks transposed ({given}): with its T and H axes swapped it fits layout={layout!r}"
                f" {pattern[layout]} with the others"
            )
