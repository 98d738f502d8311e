"""Namespace, dtype and argument handling shared by every form.

Nothing here knows a framework: arrays are inspected through the Array API alone.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device as array_device

__all__ = [
    "Array",
    "namespace_of",
    "device_of",
    "compute_dtype",
    "check_qkv",
    "check_mask",
    "check_chunk_size",
    "finite_or_zero",
    "safe_divide",
    "softmax",
    "mask_keys_and_values",
    "mask_output",
]

Array = Any
"""An array of any Array-API namespace (NumPy, CuPy, PyTorch, JAX, Dask, array-api-strict)."""


def namespace_of(**arrays: Array | None) -> Any:
    """The Array-API namespace shared by the named arrays (``None`` values are skipped).

    Raises a ``TypeError`` naming the arguments when they come from different
    frameworks, rather than the bare message of ``array_namespace``.
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    try:
        return array_namespace(*given.values())
    except TypeError as exc:
        kinds = ", ".join(f"{name}: {type(a).__module__}.{type(a).__name__}" for name, a in given.items())
        raise TypeError(f"arrays from different array libraries cannot be mixed ({kinds})") from exc


def device_of(x: Array) -> Any:
    """The device of an array (``"cpu"`` for NumPy)."""
    return array_device(x)


def compute_dtype(xp: Any, *arrays: Array) -> tuple[Any, Any]:
    """``(result_dtype, compute_dtype)`` for the given floating-point arrays.

    The result dtype is the promotion of the inputs' dtypes. Computation runs in
    that dtype, except that 16-bit floats (float16, bfloat16) are accumulated in
    float32 and the result is cast back: exponentials and sums over a sequence
    lose too much in 16 bits.
    """
    for a in arrays:
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"expected real floating-point arrays, got dtype {a.dtype}")
    result = xp.result_type(*arrays)
    if xp.finfo(result).bits < 32:
        return result, xp.float32
    return result, result


def check_qkv(q: Array, k: Array, v: Array, *, time_axis: bool = True) -> None:
    """Check that ``q``, ``k`` are (..., [T,] H, L) and ``v`` is (..., [T,] H, D) with matching leading axes."""
    min_ndim = 3 if time_axis else 2
    layout = "(..., T, H, L)" if time_axis else "(..., H, L)"
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < min_ndim:
            raise ValueError(f"{name} must have at least {min_ndim} axes {layout}, got shape {tuple(a.shape)}")
    if q.shape[-1] == 0:
        raise ValueError(f"q and k need at least one latent (L >= 1), got shape {tuple(q.shape)}")
    if tuple(q.shape) != tuple(k.shape):
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if tuple(v.shape[:-1]) != tuple(q.shape[:-1]):
        raise ValueError(
            f"v must share all axes but the last with q ({tuple(q.shape[:-1])} + (D,)), got {tuple(v.shape)}"
        )
    devices = {str(array_device(a)) for a in (q, k, v)}
    if len(devices) > 1:
        raise ValueError(f"q, k and v must be on one device, got {sorted(devices)}")


def check_mask(xp: Any, mask: Array | None, expected_shape: tuple[int, ...], name: str = "mask") -> None:
    """Check that ``mask`` is a boolean array of ``expected_shape`` (or ``None``)."""
    if mask is None:
        return
    if not hasattr(mask, "dtype") or mask.dtype != xp.bool:
        raise TypeError(f"{name} must be a boolean array (True for a real token), got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {tuple(expected_shape)}, got {tuple(mask.shape)}")


def check_chunk_size(chunk_size: object) -> int:
    """A positive Python int, or a ``ValueError``/``TypeError`` that says what was given."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
    return chunk_size


def finite_or_zero(xp: Any, running_max: Array) -> Array:
    """The shift used in ``exp(x - shift)``: the running max where it is finite, else 0.

    The running max of an empty history is ``-inf``. Any finite shift gives the
    same ratios, and 0 keeps ``exp(-inf - shift) = 0`` free of ``-inf - -inf = nan``
    in both the forward pass and the gradients.
    """
    return xp.where(running_max == -xp.inf, xp.zeros_like(running_max), running_max)


def safe_divide(xp: Any, numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, with 0 where the denominator is 0 (an empty history)."""
    is_empty = denominator == 0
    return xp.where(is_empty, xp.zeros_like(numerator), numerator / xp.where(is_empty, xp.ones_like(denominator), denominator))


def softmax(xp: Any, x: Array, axis: int) -> Array:
    """Numerically stable softmax; a row of all ``-inf`` gives zeros, not ``nan``."""
    shift = finite_or_zero(xp, xp.max(x, axis=axis, keepdims=True))
    weights = xp.exp(x - shift)
    return safe_divide(xp, weights, xp.sum(weights, axis=axis, keepdims=True))


def mask_keys_and_values(xp: Any, mask: Array, k: Array, v: Array) -> tuple[Array, Array]:
    """Padding is no key: ``k = -inf`` and ``v = 0`` there, so a nan in a padded value cannot leak.

    mask: (..., T); k: (..., T, H, L); v: (..., T, H, D).
    """
    real = mask[..., None, None]  # [..., T, 1, 1]
    return xp.where(real, k, -xp.inf), xp.where(real, v, xp.zeros_like(v))


def mask_output(xp: Any, mask: Array | None, y: Array) -> Array:
    """Output 0 at padded positions; y: (..., T, H, D)."""
    if mask is None:
        return y
    return xp.where(mask[..., None, None], y, xp.zeros_like(y))
