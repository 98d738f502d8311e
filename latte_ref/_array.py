"""Namespace, dtype and array helpers shared by every form (the argument checks are :mod:`latte_ref._checks`).

Nothing here knows a framework: arrays are inspected through the Array API alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_lazy_array, is_numpy_namespace, is_writeable_array
from array_api_compat import device as array_device

from ._dispatch import stop_gradient

__all__ = [
    "Array",
    "causal_weighted_sum",
    "compute_dtype",
    "device_of",
    "finite_or_zero",
    "keys_taking_part",
    "mask_keys_and_values",
    "mask_output",
    "namespace_of",
    "output_buffer",
    "resolve_namespace",
    "safe_divide",
    "softmax",
    "take_tokens",
    "weighted_sum_where",
]

Array = Any
"""An array of any Array-API namespace (NumPy, CuPy, PyTorch, JAX, Dask, array-api-strict)."""


def namespace_of(**arrays: Array | None) -> Any:
    """The Array-API namespace shared by the named arrays (``None`` values are skipped).

    Raises a ``TypeError`` naming the arguments when they come from different
    frameworks, rather than the bare message of ``array_namespace``.
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    for name, a in given.items():
        if not is_array_api_obj(a):
            raise TypeError(f"{name} must be an array, got {type(a).__module__}.{type(a).__name__}")
    try:
        return array_namespace(*given.values())
    except TypeError as exc:
        kinds = ", ".join(f"{name}: {type(a).__module__}.{type(a).__name__}" for name, a in given.items())
        raise TypeError(f"arrays from different array libraries cannot be mixed ({kinds})") from exc


def resolve_namespace(xp: Any) -> Any:
    """The Array-API namespace for ``xp``: NumPy when ``None``; modules like ``torch`` or ``jax.numpy`` get wrapped."""
    if xp is None:
        return array_namespace(np.empty(0))
    return array_namespace(xp.asarray(0.0))


def keys_taking_part(mask: Array | None, key_mask: Array | None) -> Array | None:
    """The keys that take part (..., Tk): those ``mask`` and ``key_mask`` both keep, or None for all of them."""
    if mask is None or key_mask is None:
        return key_mask if mask is None else mask
    return mask & key_mask


def device_of(x: Array) -> Any:
    """The device of an array (``"cpu"`` for NumPy); None for a JAX array sharded over several devices.

    None lets JAX place what is made for such an array, as it does when the two are combined.
    """
    device = array_device(x)
    return None if hasattr(device, "device_set") else device


def compute_dtype(xp: Any, *arrays: Array) -> tuple[Any, Any]:
    """``(result_dtype, compute_dtype)`` for the given floating-point arrays.

    The result dtype is the promotion of the inputs' dtypes. Computation runs in
    that dtype, except that 16-bit floats (float16, bfloat16) are accumulated in
    float32 and the result is cast back: exponentials and sums over a sequence
    lose too much in 16 bits.
    """
    for a in arrays:
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"expected real floating-point arrays (float16 to float64), got dtype {a.dtype}")
    result = xp.result_type(*arrays)
    if xp.finfo(result).bits < 32:
        return result, xp.float32
    return result, result


def output_buffer(xp: Any, like: Array, shape: tuple[int, ...] | None = None) -> Array | None:
    """An uninitialised array of ``like``'s shape (or ``shape``), dtype and device to fill in blocks.

    None where arrays are immutable.

    Filling one buffer keeps the peak at one copy of the output; collecting the
    blocks and concatenating them (JAX, whose arrays are immutable) holds two.
    """
    if not is_writeable_array(like) or is_lazy_array(like):
        return None
    return xp.empty(like.shape if shape is None else shape, dtype=like.dtype, device=device_of(like))


def causal_weighted_sum(xp: Any, weights: Array, v: Array) -> Array:
    """``weights @ v`` for lower-triangular weights (..., T, S): a non-finite ``v[s]`` reaches rows t >= s only.

    A plain matrix product lets the exact zeros above the diagonal meet a nan or inf
    value (``0 * nan = nan``) and spoil outputs that do not depend on it. The
    non-finite entries are taken out of the product and added back with a running
    sum along S, which carries them to rows t >= s exactly; finite inputs give the
    same bits as ``weights @ v``. v: (..., S, D) -> (..., T, D), with T = S.
    """
    finite = xp.isfinite(v)
    y = weights @ xp.where(finite, v, xp.zeros_like(v))
    return y + xp.cumulative_sum(xp.where(finite, xp.zeros_like(v), v), axis=-2)


def weighted_sum_where(xp: Any, weights: Array, v: Array, reads: Array) -> Array:
    """``weights @ v`` for weights that are 0 where ``reads`` is False: a non-finite ``v[s]`` reaches rows reading s.

    The generalisation of :func:`causal_weighted_sum` to any pattern (causal within packed
    segments, say). The finite part is the plain product; the non-finite entries are
    counted per row with products of 0/1 matrices, which are exact, and added back as the
    nan or infinity they make: nan for any nan, or for +inf meeting -inf.
    weights: (..., T, S); v: (..., S, D); reads: bool (..., T, S), broadcasting against weights.
    """
    finite = xp.isfinite(v)
    y = weights @ xp.where(finite, v, xp.zeros_like(v))
    d = v.shape[-1]
    kinds = xp.concat([xp.isnan(v), v == xp.inf, v == -xp.inf], axis=-1)  # [..., S, 3D]
    counts = xp.astype(reads, v.dtype) @ xp.astype(kinds, v.dtype)  # [..., T, 3D]
    has_nan, has_inf, has_minus_inf = counts[..., :d] > 0, counts[..., d : 2 * d] > 0, counts[..., 2 * d :] > 0
    zero = xp.zeros_like(y)
    extra = xp.where(has_inf, xp.full_like(y, xp.inf), zero) + xp.where(has_minus_inf, xp.full_like(y, -xp.inf), zero)
    return y + xp.where(has_nan, xp.full_like(y, xp.nan), extra)


def take_tokens(xp: Any, x: Array, index: Array) -> Array:
    """``x[..., index[..., j], :, :]`` for every j: tokens gathered per batch row, whole (H, F) rows at a time.

    x: (..., T, H, F); index: integer (..., J), values in [0, T) -> (..., J, H, F). The batch
    axes are flattened so that one ``take`` of contiguous rows does it.
    """
    n_rows, n_tokens = math.prod(x.shape[:-3]), x.shape[-3]
    offsets = xp.arange(0, n_rows * n_tokens, n_tokens, dtype=index.dtype, device=device_of(x))
    flat = xp.reshape(xp.reshape(index, (n_rows, index.shape[-1])) + offsets[:, None], (-1,))
    rows = xp.take(xp.reshape(x, (n_rows * n_tokens, x.shape[-2] * x.shape[-1])), flat, axis=0)
    return xp.reshape(rows, (*index.shape, *x.shape[-2:]))


def finite_or_zero(xp: Any, running_max: Array) -> Array:
    """The shift used in ``exp(x - shift)``: the running max where it is finite, 0 where it is ``-inf``, else nan.

    The running max of an empty history is ``-inf``. Any finite shift gives the
    same ratios, and 0 keeps ``exp(-inf - shift) = 0`` free of ``-inf - -inf = nan``
    in both the forward pass and the gradients. A running max of ``+inf`` (a ``+inf``
    key) makes every weight in its frame undefined, as ``x - inf`` would; a nan shift
    says so without evaluating ``inf - inf``, the invalid operation NumPy warns about.
    """
    shift = xp.where(running_max == xp.inf, xp.full_like(running_max, xp.nan), running_max)
    return xp.where(running_max == -xp.inf, xp.zeros_like(running_max), shift)


def safe_divide(xp: Any, numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, with 0 where the denominator is 0 (an empty history)."""
    is_empty = denominator == 0
    return xp.where(
        is_empty, xp.zeros_like(numerator), numerator / xp.where(is_empty, xp.ones_like(denominator), denominator)
    )


HALVED_MAX_SIZE = 1 << 16
"""From this many elements, NumPy's max along a short last axis is taken by halving it (see :func:`last_axis_max`)."""

HALVED_MAX_AXIS = 256
"""The longest last axis that :func:`last_axis_max` halves: NumPy reduces longer rows in its vector loops already."""


def last_axis_max(xp: Any, x: Array) -> Array:
    """``xp.max(x, axis=-1, keepdims=True)``; on NumPy, for a large x with a short last axis, faster.

    NumPy reduces a short last axis row by row: for softmax over L = 32 latents at T = 2,048
    (H = 4) that took 822 us, against 121 us for the ``exp`` of the same array. Halving the
    axis with elementwise maxima, ``max(x[:L/2], x[L/2:])`` and so on (log2 L vectorised
    calls, then the ``reduce`` of what is left), took 384 us. A maximum is the same number in
    any grouping, and ``np.maximum`` passes a nan on as ``max`` does; only the sign of a zero
    maximum may differ (-0.0 against 0.0), which no ``exp(x - max)`` can see. Small arrays (a
    decode step's) keep the one ``reduce``, cheaper there than a call per halving; so do other
    libraries, whose ``max`` has no such cost.
    """
    if not is_numpy_namespace(xp):
        return xp.max(x, axis=-1, keepdims=True)
    if math.prod(x.shape) >= HALVED_MAX_SIZE and x.shape[-1] <= HALVED_MAX_AXIS:
        while x.shape[-1] > 1 and x.shape[-1] % 2 == 0:
            half = x.shape[-1] // 2
            x = np.maximum(x[..., :half], x[..., half:])
    return np.maximum.reduce(x, axis=-1, keepdims=True)


def total(xp: Any, x: Array) -> float:
    """The sum of all of ``x``'s elements, as a Python float: a read, for eager arrays only (no gradient)."""
    if is_numpy_namespace(xp):
        return float(np.add.reduce(x, axis=None))
    return float(xp.sum(stop_gradient(x)))


def last_axis_sum(xp: Any, x: Array) -> Array:
    """``xp.sum(x, axis=-1, keepdims=True)``, for the small arrays of a decode step.

    On NumPy the ufunc's own ``reduce``: the same reduction (pairwise summation included)
    without the argument handling of ``numpy.sum``, which at decode sizes costs more than
    the sum itself.
    """
    if is_numpy_namespace(xp):
        return np.add.reduce(x, axis=-1, keepdims=True)
    return xp.sum(x, axis=-1, keepdims=True)


def read_latents(xp: Any, weights: Array, numerator: Array) -> Array:
    """sum_l weights_l S_{l,d}: weights (..., L) and numerator (..., L, D) give (..., D).

    The read-out of one token, sized for decoding. NumPy runs a batched (1, L) @ (L, D) product as
    a loop in C, the cheapest way there; elsewhere it is a BLAS call per head, whose threads, on a
    loaded machine, wait on each other for milliseconds, so a product and a sum are used instead.
    """
    if is_numpy_namespace(xp):
        return np.matmul(weights[..., None, :], numerator)[..., 0, :]
    return xp.sum(weights[..., :, None] * numerator, axis=-2)  # [..., L, 1] * [..., L, D] -> [..., D]


def softmax(xp: Any, x: Array, axis: int) -> Array:
    """Numerically stable softmax; a row of all ``-inf`` gives zeros, not ``nan``."""
    if math.prod(x.shape) == 0:  # (Dask's max refuses an empty array even along a non-empty axis)
        return x
    largest = last_axis_max(xp, x) if axis in (-1, x.ndim - 1) else xp.max(x, axis=axis, keepdims=True)
    shift = finite_or_zero(xp, largest)
    weights = xp.exp(x - shift)
    total = xp.sum(weights, axis=axis, keepdims=True)  # >= 1 (the max's own term), or 0 for a row of -inf
    return weights / xp.where(total == 0, xp.ones_like(total), total)


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
