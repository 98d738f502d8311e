"""Argument checks shared by every form: q, k, v and their layout, masks, flags, sizes and dtypes.

Nothing here knows a framework: arrays are inspected through the Array API alone. Every
error is one line that names the argument at fault.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

from array_api_compat import array_namespace

from ._array import Array, compute_dtype, device_of, namespace_of
from ._layout import check_layout, explain_layout, repeat_kv_heads, swap_time_and_heads, time_major

__all__ = [
    "check_chunk_size",
    "check_dtype_request",
    "check_flag",
    "check_mask",
    "check_positive_int",
    "check_qkv",
    "same_device",
]


def _prepare_qkv(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    *,
    time_axis: bool = True,
    names: tuple[str, str, str] = ("q", "k", "v"),
    mask_name: str = "mask",
    cross: bool = False,
    key_mask: Array | None = None,
    layout: str = "BTHD",
    segment_ids: Array | None = None,
    state: Any = None,
) -> tuple[Any, Array, Array, Array, Any, Any]:
    """The preamble every form shares: check q, k, v and the mask, put them time-major, cast them.

    Parameters
    ----------
    q, k : array, shape (..., [T,] H, L) and (..., [T,] H_kv, L)
    v : array, shape (..., [T,] H_kv, D)
        H_kv = H, or a divisor of H (grouped-query attention): K/V head j serves query heads
        j·g .. j·g + g - 1, g = H / H_kv, and is repeated to H heads here.
    mask : bool array, shape (..., [T]), optional
        Checked against the axes of q before H, L, and on q's device.
    time_axis : bool
        Whether the arrays have a T axis (False for one token, as in :func:`latte_ref.step`).
    names, mask_name : str
        The argument names that error messages use.
    cross : bool
        Whether k and v may have their own length Tk along T (cross-attention, see :func:`check_qkv`).
        ``mask`` then needs Tq = Tk, since it marks the tokens of one sequence.
    key_mask : bool array, shape (..., Tk), optional
        Keys to take part (True) or not (False); checked against the axes of k before H, L.
    layout : {"BTHD", "BHTD"}
        The layout of q, k, v (see :mod:`latte_ref._layout`); "BHTD" arrays are returned transposed
        to "BTHD", and the caller transposes its output back.
    segment_ids, state : optional
        Only their shapes are read here, to tell a transposed input from another mistake.

    Returns
    -------
    xp : namespace
    q, k, v : arrays, shapes (..., [T,] H, L) and (..., [T,] H, D)
        Time-major, K/V heads repeated to H, in the computation dtype (see :func:`compute_dtype`);
        not copied when already so.
    out_dtype, dtype : dtypes
        The result dtype and the computation dtype.
    """
    xp = namespace_of(**{names[0]: q, names[1]: k, names[2]: v, mask_name: mask, "key_mask": key_mask})
    layout = check_layout(layout)
    if time_axis:
        explain_layout(
            q,
            k,
            v,
            layout,
            cross=cross,
            names=names,
            mask=mask,
            key_mask=key_mask,
            segment_ids=segment_ids,
            state=state,
        )
    check_qkv(q, k, v, time_axis=time_axis, names=names, cross=cross, layout=layout)
    q, k, v = (swap_time_and_heads(xp, a, layout) for a in (q, k, v))
    if cross and mask is not None and q.shape[-3] != k.shape[-3]:
        raise ValueError(
            f"{mask_name} marks the tokens of one sequence (keys and outputs) and needs q and k of one length, got"
            f" Tq={q.shape[-3]} and Tk={k.shape[-3]}; to leave out keys of another sequence, pass key_mask"
        )
    check_mask(xp, mask, q.shape[:-2], name=mask_name, like=q)
    check_mask(xp, key_mask, k.shape[:-2], name="key_mask", like=q)
    out_dtype, dtype = compute_dtype(xp, q, k, v)
    q, k, v = (xp.astype(a, dtype, copy=False) for a in (q, k, v))
    k, v = repeat_kv_heads(xp, k, v, q.shape[-2])
    return xp, q, k, v, out_dtype, dtype


def check_qkv(
    q: Array,
    k: Array,
    v: Array,
    *,
    time_axis: bool = True,
    names: tuple[str, str, str] = ("q", "k", "v"),
    cross: bool = False,
    layout: str = "BTHD",
) -> None:
    """Check that ``q`` is (..., [T,] H, L), ``k`` (..., [T,] H_kv, L) and ``v`` (..., [T,] H_kv, D), on one device.

    Real floating arrays; H_kv divides H (grouped-query attention; H_kv = H is plain attention).
    With ``cross``, k and v may have another length Tk than q's Tq along T (cross-attention).
    ``layout="BHTD"`` reads the arrays as (..., H, T, F). Call after :func:`namespace_of`, which
    makes sure the three are arrays of one library.
    """
    xp = array_namespace(q)
    min_ndim = 3 if time_axis else 2
    axes = ("T, H" if layout == "BTHD" else "H, T") if time_axis else "H"
    for i, (name, a) in enumerate(zip(names, (q, k, v), strict=True)):
        pattern = f"(..., {axes}, {'D' if i == 2 else 'L'})"
        if a.ndim < min_ndim:
            raise ValueError(f"{name} must have at least {min_ndim} axes {pattern}, got shape {tuple(a.shape)}")
        if any(n is None or (isinstance(n, float) and math.isnan(n)) for n in a.shape):  # standard: None; Dask: nan
            raise ValueError(
                f"{name} has an axis of unknown length, shape {tuple(a.shape)}; compute the lengths first"
                " (on Dask, compute_chunk_sizes())"
            )
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{name} must be a real floating-point array (float16 to float64), got dtype {a.dtype}")
    if q.shape[-1] == 0:
        raise ValueError(f"q and k need at least one latent (L >= 1), got shape {tuple(q.shape)}")
    given = f"{tuple(q.shape)} and {tuple(k.shape)}"
    sq, sk, sv = (time_major(tuple(a.shape), layout) if time_axis else tuple(a.shape) for a in (q, k, v))
    if q.ndim != k.ndim or (sq[:-2] != sk[:-2] and not (cross and time_axis and sq[:-3] == sk[:-3])):
        lengths = " and their lengths along T" if cross and time_axis else ""
        raise ValueError(f"q and k must have the same shape but for their heads{lengths}, got {given}")
    if sq[-1] != sk[-1]:
        raise ValueError(f"q and k must have the same number of latents L (the last axis), got {given}")
    if sv[:-1] != sk[:-1]:
        raise ValueError(
            f"v must share all axes but the last with k ({tuple(k.shape[:-1])} + (D,)), got {tuple(v.shape)}"
        )
    if sk[-2] != sq[-2] and (sk[-2] == 0 or sq[-2] % sk[-2]):
        raise ValueError(
            f"{names[1]} and {names[2]} have {sk[-2]} heads, which must divide the {sq[-2]} heads of {names[0]}"
            " (grouped-query attention: each K/V head serves H / H_kv consecutive query heads)"
        )
    same_device(**dict(zip(names, (q, k, v), strict=True)))


def same_device(**arrays: Array | None) -> None:
    """Raise a ``ValueError`` naming the arrays (``None`` skipped) when they are not all on one device."""
    devices = {name: device_of(a) for name, a in arrays.items() if a is not None}
    # None, for a JAX tracer or an array sharded over several devices: JAX places it where it is combined.
    if len({str(d) for d in devices.values() if d is not None}) > 1:
        where = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"arrays must be on one device, got {where}")


def check_mask(
    xp: Any, mask: Array | None, expected_shape: tuple[int, ...], name: str = "mask", *, like: Array | None = None
) -> None:
    """Check that ``mask`` is a boolean array of ``expected_shape`` (or ``None``), on the device of ``like``."""
    if mask is None:
        return
    if like is not None:
        same_device(**{name: mask, "q": like})
    if not hasattr(mask, "dtype") or mask.dtype != xp.bool:
        given = f"dtype {mask.dtype}" if hasattr(mask, "dtype") else type(mask).__name__
        raise TypeError(f"{name} must be a boolean array (True for a real token), got {given}")
    if tuple(mask.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape {tuple(expected_shape)} (the axes of q before H, L), got {tuple(mask.shape)}"
        )


def check_chunk_size(chunk_size: object) -> int:
    """A positive Python int, or a ``ValueError``/``TypeError`` that says what was given."""
    return check_positive_int("chunk_size", chunk_size, none_allowed=True)


def check_positive_int(name: str, value: object, *, none_allowed: bool = False) -> int:
    """``value`` as a Python int >= 1 (NumPy integers accepted; bools, floats and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        allowed = " or None" if none_allowed else ""
        raise TypeError(f"{name} must be a positive int{allowed}, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool; anything else (``"yes"``, ``1``, an array) is a ``TypeError``, not a silent truth test."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # Python or NumPy bool
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_dtype_request(xp: Any, dtype: Any, device: Any = None, name: str = "dtype") -> Any:
    """The dtype an array created with ``dtype`` really gets; an error if that is not the one asked for.

    A framework may quietly narrow a request: JAX without x64 mode turns float64 into
    float32. A reference that silently computes in a narrower dtype is wrong without
    saying so, so the request is checked on a 0-d probe array.
    """
    try:
        with warnings.catch_warnings():  # JAX warns before narrowing; the error below says more
            warnings.simplefilter("ignore")
            probe = xp.zeros((), dtype=dtype, device=device)
    except Exception as exc:  # frameworks raise many kinds for an unknown dtype
        raise TypeError(f"{name} must be a floating dtype of {xp.__name__}, got {dtype!r}") from exc
    if not xp.isdtype(probe.dtype, "real floating"):
        raise TypeError(f"{name} must be a real floating dtype, got {dtype!r}")
    if not _same_dtype(probe.dtype, dtype):
        hint = " (on JAX, float64 needs jax.config.update('jax_enable_x64', True))" if "jax" in xp.__name__ else ""
        asked = getattr(dtype, "__name__", None) or str(dtype)
        raise ValueError(f"{name}={asked} was asked for, but {xp.__name__} gives {probe.dtype}{hint}")
    return probe.dtype


def _same_dtype(actual: Any, requested: Any) -> bool:
    try:
        return bool(actual == requested)
    except TypeError:
        return str(actual) == str(requested)
