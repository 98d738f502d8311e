"""The causal Latte state and its associative merge.

For a segment of tokens s = s0..s1 and each latent l of each head, the state holds

    running_max[l] = m_l = max_s k[s, l]
    normaliser[l]  = a_l = sum_s exp(k[s, l] - m_l)
    numerator[l]   = S_l = sum_s exp(k[s, l] - m_l) v[s]          (a D-vector)

so that S_l / a_l = sum_s p(s | l) v[s] is the latent's summary of the values. An empty
segment has m = -inf, a = 0, S = 0. Shapes, with ``...`` the batch axes:

    running_max  (..., H, L)
    normaliser   (..., H, L)
    numerator    (..., H, L, D)

The state is kept in the computation dtype (float32 for 16-bit inputs).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import array_api_extra as xpx
from array_api_compat import is_torch_array, to_device

from ._array import Array, device_of, finite_or_zero, mask_output, namespace_of, resolve_namespace, safe_divide, softmax
from ._checks import check_dtype_request, check_positive_int, same_device
from ._dispatch import is_traced, stop_gradient

__all__ = [
    "LatteState",
    "check_state",
    "combine",
    "empty_state",
    "init_state",
    "read_out",
    "read_queries",
    "restart",
    "segmented_combine",
    "summarise",
    "warn_if_values_may_overflow",
]


class LatteState(NamedTuple):
    """Recurrent state of causal Latte: per latent, a running max, normaliser and numerator.

    Attributes
    ----------
    running_max : array, shape (..., H, L)
        ``m = max_s k[s, l]`` over the tokens seen; ``-inf`` before any token.
    normaliser : array, shape (..., H, L)
        ``a = sum_s exp(k[s, l] - m)``.
    numerator : array, shape (..., H, L, D)
        ``S = sum_s exp(k[s, l] - m) v[s]``.

    Being a ``NamedTuple``, it is a pytree in JAX and can cross ``jax.jit``. It is not one of the
    types that ``torch.load(..., weights_only=True)`` accepts by default: allow it once with
    ``torch.serialization.add_safe_globals([LatteState])``, or save ``state._asdict()`` (a dict of
    tensors) and rebuild with ``LatteState(**loaded)``.
    """

    running_max: Array
    normaliser: Array
    numerator: Array

    def to(self, *args: Any, **kwargs: Any) -> LatteState:
        """The state with each array moved and/or cast: ``Tensor.to``'s arguments on torch.

        For arrays of other libraries, the keywords ``device=`` (through the Array API's
        ``to_device``) and ``dtype=`` (through ``astype``) only.

        Examples
        --------
        >>> import numpy as np, latte_ref
        >>> latte_ref.init_state((2,), 1, 3, 4).to(dtype=np.float32).numerator.dtype
        dtype('float32')
        """
        if all(is_torch_array(a) for a in self):
            return LatteState(*(a.to(*args, **kwargs) for a in self))
        unknown = sorted(set(kwargs) - {"device", "dtype"})
        if args or unknown:
            raise TypeError(
                f"LatteState.to takes only device= and dtype= keywords for {type(self.numerator).__module__} arrays,"
                f" got {len(args)} positional argument(s){' and ' + ', '.join(unknown) if unknown else ''}"
            )
        xp = namespace_of(**dict(zip(self._fields, self, strict=True)))
        arrays = tuple(self)
        if kwargs.get("dtype") is not None:
            dtype = check_dtype_request(xp, kwargs["dtype"], device_of(self.numerator))
            arrays = tuple(xp.astype(a, dtype) for a in arrays)
        if kwargs.get("device") is not None:
            arrays = tuple(to_device(a, kwargs["device"]) for a in arrays)
        return LatteState(*arrays)

    def detach(self) -> LatteState:
        """The state as a constant for autodiff: ``Tensor.detach`` on torch, ``jax.lax.stop_gradient`` on JAX.

        Arrays without autograd (NumPy, CuPy, Dask) come back as they are. Truncated
        backpropagation through time detaches the state carried from one chunk to the next.
        """
        return LatteState(*(stop_gradient(a) for a in self))


def init_state(
    batch_shape: tuple[int, ...],
    n_heads: int,
    n_latents: int,
    head_dim: int,
    *,
    xp: Any = None,
    dtype: Any = None,
    device: Any = None,
) -> LatteState:
    """The state of an empty history: ``m = -inf``, ``a = 0``, ``S = 0``.

    Parameters
    ----------
    batch_shape : tuple of int
        The leading axes ``...``.
    n_heads, n_latents, head_dim : int
        H, L (latents per head) and D (value dimension per head).
    xp : namespace, optional
        Array namespace of the state; NumPy when omitted.
    dtype, device : optional
        Floating dtype (the namespace's default when omitted) and device.

    Examples
    --------
    >>> import latte_ref
    >>> s = latte_ref.init_state((2,), n_heads=4, n_latents=3, head_dim=5)
    >>> s.running_max.shape, s.numerator.shape
    ((2, 4, 3), (2, 4, 3, 5))
    """
    xp = resolve_namespace(xp)
    if not isinstance(batch_shape, tuple) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in batch_shape
    ):
        raise TypeError(f"batch_shape must be a tuple of non-negative ints, got {batch_shape!r}")
    n_heads = check_positive_int("n_heads", n_heads)
    n_latents = check_positive_int("n_latents", n_latents)
    head_dim = check_positive_int("head_dim", head_dim)
    if dtype is None:
        dtype = xpx.default_dtype(xp, device=device)
    dtype = check_dtype_request(xp, dtype, device)
    return _empty(xp, (*batch_shape, n_heads, n_latents), head_dim, dtype, device)


def _empty(xp: Any, shape: tuple[int, ...], head_dim: int, dtype: Any, device: Any) -> LatteState:
    return LatteState(
        running_max=xp.full(shape, -xp.inf, dtype=dtype, device=device),
        normaliser=xp.zeros(shape, dtype=dtype, device=device),
        numerator=xp.zeros((*shape, head_dim), dtype=dtype, device=device),
    )


def empty_state(xp: Any, q: Array, v: Array, dtype: Any, *, time_axis: bool = True) -> LatteState:
    """The state of an empty history for q (..., [T,] H, L) and v (..., [T,] H, D), in ``dtype`` on q's device.

    Shapes: running_max and normaliser (..., H, L), numerator (..., H, L, D), with ``...`` the
    batch axes of q (all axes before T, or before H when ``time_axis`` is False).
    """
    batch = q.shape[:-3] if time_axis else q.shape[:-2]
    # The dtype is the forms' computation dtype, already that of arrays: no probe of the request (init_state's).
    return _empty(xp, (*batch, q.shape[-2], q.shape[-1]), v.shape[-1], dtype, device_of(q))


def combine(earlier: LatteState, later: LatteState) -> LatteState:
    """Merge the states of two consecutive segments into the state of their concatenation.

    With m = max(m1, m2)::

        a = a1 exp(m1 - m) + a2 exp(m2 - m)
        S = S1 exp(m1 - m) + S2 exp(m2 - m)

    The merge is associative, which lets a long sequence be reduced in pieces
    (and in parallel); it is commutative as well, but the argument names keep
    the order of the segments explicit.
    """
    xp = _check_pair(earlier, later)
    running_max = xp.maximum(earlier.running_max, later.running_max)  # [..., H, L]
    shift = finite_or_zero(xp, running_max)
    scale_earlier = xp.exp(earlier.running_max - shift)
    scale_later = xp.exp(later.running_max - shift)
    return LatteState(
        running_max=running_max,
        normaliser=earlier.normaliser * scale_earlier + later.normaliser * scale_later,
        numerator=earlier.numerator * scale_earlier[..., None] + later.numerator * scale_later[..., None],
    )


def with_constant_frame(xp: Any, state: LatteState) -> LatteState:
    """The same state with its running max a constant for autodiff; its gradient moves into a and S.

    (m, a, S) stands for (a e^m, S e^m), so a form may pick any frame, and the chunked forms
    hold theirs constant (no gradient flows through a max they choose). A state that arrives
    from differentiable code (:func:`summarise`, :func:`combine`, another device) has an m
    that does carry a gradient: rewritten as (sg(m), a e^(m - sg(m)), S e^(m - sg(m))) it is
    the same numbers (the factor is exactly 1) and hands m's gradient to a and S, where the
    frames of the chunked forms keep it.
    """
    frame = stop_gradient(state.running_max)
    if frame is state.running_max:  # an array without autograd
        return state
    finite = xp.isfinite(frame)
    # where, twice: -inf - -inf is nan, and a nan in the unused branch would reach the gradient.
    exponent = xp.where(finite, state.running_max - xp.where(finite, frame, xp.zeros_like(frame)), 0.0)
    factor = xp.where(finite, xp.exp(exponent), 1.0)  # [..., H, L], 1 in value
    return LatteState(frame, state.normaliser * factor, state.numerator * factor[..., None])


def restart(xp: Any, state: LatteState, starts: Array) -> LatteState:
    """The state with its history dropped (m = -inf, a = 0, S = 0) where ``starts`` (...) is True.

    A packed row's new segment begins with an empty history; elsewhere the state is kept.
    """
    keep = ~starts[..., None, None]  # [..., 1, 1]
    zero = xp.zeros_like(state.normaliser)
    return LatteState(
        running_max=xp.where(keep, state.running_max, xp.full_like(state.running_max, -xp.inf)),
        normaliser=xp.where(keep, state.normaliser, zero),
        numerator=xp.where(keep[..., None], state.numerator, xp.zeros_like(state.numerator)),
    )


def segmented_combine(earlier: LatteState, later: LatteState, later_restarts: Array) -> LatteState:
    """:func:`combine` for packed rows: ``later`` alone where it holds the start of a new segment.

    ``later_restarts`` (...) is True where a segment starts inside (or at the first
    token of) the later stretch of tokens, whose state then holds the tokens from the
    last such start on: nothing earlier reaches it. The merge of pairs
    (restarts, state) this defines is associative, so a packed sequence is reduced
    in pieces as an unpacked one is.
    """
    xp = _check_pair(earlier, later)
    merged = combine(earlier, later)
    keep = ~later_restarts[..., None, None]  # [..., 1, 1]
    return LatteState(
        running_max=xp.where(keep, merged.running_max, later.running_max),
        normaliser=xp.where(keep, merged.normaliser, later.normaliser),
        numerator=xp.where(keep[..., None], merged.numerator, later.numerator),
    )


def summarise(xp: Any, k: Array, v: Array) -> LatteState:
    """The state of a whole segment at once, from masked keys (``-inf`` for padding).

    k: (..., T, H, L), v: (..., T, H, D) -> state of the T tokens (the empty state when T = 0).
    """
    if k.shape[-3] == 0:
        return empty_state(xp, k, v, k.dtype)
    running_max = xp.max(k, axis=-3)  # [..., H, L]
    weights = xp.exp(k - finite_or_zero(xp, running_max)[..., None, :, :])  # [..., T, H, L]
    weights_hlt = xp.moveaxis(weights, -3, -1)  # [..., H, L, T]
    v_htd = xp.moveaxis(v, -3, -2)  # [..., H, T, D]
    return LatteState(running_max, xp.sum(weights, axis=-3), weights_hlt @ v_htd)


def read_out(xp: Any, p_latent_given_query: Array, state: LatteState) -> Array:
    """``y[t] = sum_l p(l | t) S_l / a_l``: queries (..., T, H, L) read against one state -> (..., T, H, D)."""
    latent_values = safe_divide(xp, state.numerator, state.normaliser[..., None])  # [..., H, L, D]
    p_hlt = xp.moveaxis(p_latent_given_query, -3, -2)  # [..., H, T, L]
    return xp.moveaxis(p_hlt @ latent_values, -2, -3)  # [..., T, H, D]


def read_queries(xp: Any, q: Array, mask: Array | None, state: LatteState) -> Array:
    """Queries q (..., T, H, L) read against one state, ``softmax_l(q)`` then :func:`read_out`; 0 where padded.

    mask: (..., T) or None -> y (..., T, H, D).
    """
    return mask_output(xp, mask, read_out(xp, softmax(xp, q, axis=-1), state))


def _check_state_arrays(name: str, state: object) -> Any:
    """``state`` is a LatteState of real floating arrays of one library, consistent in shape; its namespace."""
    if not isinstance(state, LatteState):
        raise TypeError(f"{name} must be a LatteState, got {type(state).__name__}")
    arrays = {f"{name}.{field}": a for field, a in zip(LatteState._fields, state, strict=True)}
    xp = namespace_of(**arrays)
    same_device(**arrays)
    for field, a in arrays.items():
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{field} must be real floating-point, got dtype {a.dtype}")
    m, a, s = state
    if m.ndim < 2 or tuple(a.shape) != tuple(m.shape) or tuple(s.shape[:-1]) != tuple(m.shape):
        raise ValueError(
            f"{name} must hold running_max and normaliser of one shape (..., H, L) and numerator (..., H, L, D),"
            f" got {tuple(m.shape)}, {tuple(a.shape)} and {tuple(s.shape)}"
        )
    return xp


def _check_pair(earlier: object, later: object) -> Any:
    """Both states valid, of one library and device, and of the same shapes: their namespace."""
    _check_state_arrays("earlier", earlier)
    _check_state_arrays("later", later)
    assert isinstance(earlier, LatteState) and isinstance(later, LatteState)
    xp = namespace_of(earlier=earlier.numerator, later=later.numerator)
    same_device(earlier=earlier.numerator, later=later.numerator)
    if tuple(earlier.numerator.shape) != tuple(later.numerator.shape):
        raise ValueError(
            "earlier and later must be states of the same shape (..., H, L, D), got numerators of shape"
            f" {tuple(earlier.numerator.shape)} and {tuple(later.numerator.shape)}"
        )
    return xp


def check_state(xp: Any, state: LatteState, q: Array, v: Array, dtype: Any, *, time_axis: bool = True) -> LatteState:
    """Check a caller's state against q (..., [T,] H, L) and v (..., [T,] H, D); return it in ``dtype``."""
    if not isinstance(state, LatteState):
        raise TypeError(f"state must be a LatteState (or None), got {type(state).__name__}")
    namespace_of(q=q, **{f"state.{field}": a for field, a in zip(LatteState._fields, state, strict=True)})
    same_device(q=q, **{f"state.{field}": a for field, a in zip(LatteState._fields, state, strict=True)})
    lead = q.shape[:-3] if time_axis else q.shape[:-2]
    expected = (*lead, q.shape[-2], q.shape[-1])
    for name, a, shape in (
        ("running_max", state.running_max, expected),
        ("normaliser", state.normaliser, expected),
        ("numerator", state.numerator, (*expected, v.shape[-1])),
    ):
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"state.{name} must be real floating-point, got dtype {a.dtype}")
        if tuple(a.shape) != tuple(shape):
            raise ValueError(
                f"state.{name} must have shape {tuple(shape)} (batch {tuple(lead)}, H, L"
                f"{', D' if name == 'numerator' else ''}) for these inputs, got {tuple(a.shape)}"
            )
    return LatteState(*(xp.astype(a, dtype) for a in state))


def warn_if_values_may_overflow(xp: Any, v: Array, *, state_tokens: int) -> None:
    """A ``RuntimeWarning`` when values are so large that a state's numerator may overflow.

    A state holds sum_s exp(k_s - m) v_s over up to ``state_tokens`` tokens, each weight at
    most 1, so it is finite whenever max |v| <= finfo.max / state_tokens; beyond that it can
    reach inf where the output, a convex combination of values, is still finite. Latte is
    linear in v: scaling v down by a power of two and the output back up is exact. Read only
    for eager arrays (a lazy or traced array is not read).
    """
    if state_tokens <= 1 or math.prod(v.shape) == 0 or is_traced(v):
        return
    limit = float(xp.finfo(v.dtype).max) / state_tokens
    largest = float(xp.max(xp.abs(stop_gradient(v))))
    if largest > limit:  # nan compares False: a nan value is its own, local, result
        warnings.warn(
            f"values as large as {largest:.3g} may overflow the state's sum over {state_tokens} tokens"
            f" (finite up to max |v| = {limit:.3g} in {v.dtype}); Latte is linear in v: scale v down and the"
            " output up",
            RuntimeWarning,
            stacklevel=4,  # the caller of the form (this, the form, its exact-arithmetic wrapper)
        )
