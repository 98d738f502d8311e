"""Deliberately wrong backward passes (PyTorch): each output is exact, each gradient is not.

``latte-ref validate --grad`` must reject every one of them, and without ``--grad`` pass them
(tests/test_validate_grad.py): only the gradients tell them from a correct implementation.
Each wraps :func:`latte_ref.recurrent` (which takes ``state=``), the way a kernel with a
hand-written backward wraps its forward.
"""

from __future__ import annotations

from typing import Any

import torch

import latte_ref


def _exact_gradients(q: Any, k: Any, v: Any, dy: Any) -> tuple[Any, Any, Any]:
    """The true d(sum(y * dy)) / d(q, k, v) of :func:`latte_ref.recurrent`, recomputed (as a backward kernel would)."""
    leaves = [a.detach().requires_grad_(True) for a in (q, k, v)]
    with torch.enable_grad():
        y = latte_ref.recurrent(*leaves)
        return torch.autograd.grad(y, leaves, grad_outputs=dy)


class _ScaledKeyGradient(torch.autograd.Function):
    """Forward exact; backward returns dk 1% too large (a wrong constant in a hand-written kernel)."""

    @staticmethod
    def forward(ctx: Any, q: Any, k: Any, v: Any) -> Any:
        ctx.save_for_backward(q, k, v)
        return latte_ref.recurrent(q, k, v)

    @staticmethod
    def backward(ctx: Any, dy: Any) -> Any:
        dq, dk, dv = _exact_gradients(*ctx.saved_tensors, dy)
        return dq, 1.01 * dk, dv


class _TiesCountedTwice(torch.autograd.Function):
    """Forward exact; backward doubles dk of a key that ties with an earlier key of the running max.

    On random keys nothing ties and the gradient is exact: only the tied-key cases catch it.
    """

    @staticmethod
    def forward(ctx: Any, q: Any, k: Any, v: Any) -> Any:
        ctx.save_for_backward(q, k, v)
        return latte_ref.recurrent(q, k, v)

    @staticmethod
    def backward(ctx: Any, dy: Any) -> Any:
        q, k, v = ctx.saved_tensors
        dq, dk, dv = _exact_gradients(q, k, v, dy)
        earlier_max = torch.cummax(k, dim=-3).values  # [..., T, H, L]: max of keys 0..t
        earlier_max = torch.cat([torch.full_like(k[..., :1, :, :], -torch.inf), earlier_max[..., :-1, :, :]], dim=-3)
        tied = k == earlier_max  # the key equals the max before it
        return dq, torch.where(tied, 2.0 * dk, dk), dv


def scaled_key_gradient(q: Any, k: Any, v: Any) -> Any:
    """dk is 1.01 times the true one."""
    return _ScaledKeyGradient.apply(q, k, v)


def key_detached(q: Any, k: Any, v: Any) -> Any:
    """k is detached: the output is exact and dk is 0 (a forgotten input of a custom op)."""
    return latte_ref.recurrent(q, k.detach(), v)


def ties_counted_twice(q: Any, k: Any, v: Any) -> Any:
    """dk doubled where a key ties with the running max before it."""
    return _TiesCountedTwice.apply(q, k, v)


def value_gradient_dropped_across_calls(q: Any, k: Any, v: Any, state: Any = None, return_state: bool = False) -> Any:
    """With ``state=``: the carried state is detached, so no gradient reaches an earlier call's tokens."""
    if state is not None:
        state = type(state)(*(a.detach() for a in state))
    return latte_ref.recurrent(q, k, v, state=state, return_state=return_state)


PLANTED_GRAD: dict[str, tuple[Any, dict[str, Any], str]] = {
    "scaled_key_gradient": (scaled_key_gradient, {}, "t_prime_37"),
    "key_detached": (key_detached, {}, "t_prime_37"),
    "ties_counted_twice": (ties_counted_twice, {}, "tied_keys_grid"),
    "state_detached": (value_gradient_dropped_across_calls, {"with_state": True}, "state_cuts"),
}
"""Name -> (candidate of form causal, extra settings, a case that must catch it with grad=True)."""
