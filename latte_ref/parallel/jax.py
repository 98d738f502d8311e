r"""Sequence-parallel Latte on JAX: the sequence axis T sharded across the devices of a mesh axis.

Device ``d`` of ``n`` holds tokens ``d·T/n .. (d+1)·T/n - 1`` of q, k, v and computes its
own outputs; only states (H·L·(D + 2) numbers each) cross between devices. With ``⊕`` the
associative :func:`latte_ref.combine`:

.. code-block:: text

    local_d  = summarise(k_d, v_d)                            on every device at once
    local    = all_gather(local_d)                            n small states on every device
    before_d = state ⊕ local_0 ⊕ ... ⊕ local_(d-1)            an associative scan, log2 n deep
    y_d      = causal(q_d, k_d, v_d, state=before_d)          on every device at once

Bidirectionally the whole sequence's state is one all-reduce of the local states,
``m = pmax(m_d)``, ``a = psum(a_d e^(m_d - m))``, ``S = psum(S_d e^(m_d - m))``, and every
device reads its queries against it.

Within a device the chunks of :func:`latte_ref.causal` run as a ``lax.scan`` over
:func:`latte_ref.causal.causal_chunk`, so compiling costs one chunk, not T / (n·C).
JAX is imported inside the functions, so importing this module needs no JAX.

Examples
--------
>>> import numpy as np, jax, jax.numpy as jnp, latte_ref
>>> from latte_ref.parallel import jax as sequence_parallel_jax
>>> q, k, v = np.random.default_rng(0).normal(size=(3, 2, 64, 4, 8)).astype(np.float32)
>>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("sequence",))
>>> y = sequence_parallel_jax.causal(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mesh=mesh)
>>> bool(np.allclose(np.asarray(y), latte_ref.causal(q, k, v), atol=1e-5))
True
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .._array import (
    Array,
    _prepare_qkv,
    check_chunk_size,
    check_flag,
    finite_or_zero,
    mask_keys_and_values,
    mask_output,
)
from ..causal import DEFAULT_CHUNK_SIZE, causal_chunk
from ..state import LatteState, check_state, combine, empty_state, read_queries, summarise

__all__ = ["bidirectional", "causal"]


def causal(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    chunk_size: int | None = None,
    state: LatteState | None = None,
    return_state: bool = False,
    mesh: Any = None,
    axis_name: str | None = None,
) -> Array | tuple[Array, LatteState]:
    """:func:`latte_ref.causal` with T sharded over the mesh axis ``axis_name``.

    Parameters
    ----------
    q, k : JAX array, shape (..., T, H, L)
    v : JAX array, shape (..., T, H, D)
    mask, chunk_size, state, return_state
        As for :func:`latte_ref.causal`; ``state`` and the returned state are replicated.
    mesh : jax.sharding.Mesh, optional
        The devices; a one-axis mesh of all of them when omitted.
    axis_name : str, optional
        The mesh axis that T is split along; may be omitted for a one-axis mesh.
        T must be a positive multiple of the number of devices along it (pad with ``mask``).
        Other mesh axes hold copies: every device along them does the same work.

    Returns
    -------
    y : JAX array, shape (..., T, H, D), sharded along T
    state : LatteState
        Only with ``return_state=True``.
    """
    from jax.sharding import PartitionSpec

    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else check_chunk_size(chunk_size)
    check_flag("return_state", return_state)
    xp, q, k, v, mask, out_dtype, mesh, axis_name = _prepare(q, k, v, mask, mesh, axis_name)
    if state is None:
        state = empty_state(xp, q, v, q.dtype)
    else:
        state = check_state(xp, state, q, v, q.dtype)
    state = _placed(state, mesh, PartitionSpec())  # replicated
    # A chunk longer than a device's slice would only be padding.
    chunk_size = min(chunk_size, q.shape[-3] // mesh.shape[axis_name])
    y, final = _sharded_causal(mesh, axis_name, q.ndim, chunk_size)(q, k, v, mask, state)
    y = xp.astype(y, out_dtype)
    return (y, final) if return_state else y


def bidirectional(
    q: Array, k: Array, v: Array, *, mask: Array | None = None, mesh: Any = None, axis_name: str | None = None
) -> Array:
    """:func:`latte_ref.bidirectional` with T sharded over the mesh axis ``axis_name``.

    Arguments as for :func:`causal`; returns y (..., T, H, D), sharded along T.
    """
    xp, q, k, v, mask, out_dtype, mesh, axis_name = _prepare(q, k, v, mask, mesh, axis_name)
    return xp.astype(_sharded_bidirectional(mesh, axis_name, q.ndim)(q, k, v, mask), out_dtype)


def _prepare(q: Array, k: Array, v: Array, mask: Array | None, mesh: Any, axis_name: str | None) -> tuple[Any, ...]:
    """Check the arguments as the core does; q, k, v in the computation dtype, a mask, and the mesh axis."""
    import jax
    import numpy as np

    xp, q, k, v, out_dtype, _ = _prepare_qkv(q, k, v, mask)
    if mesh is None:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("sequence",))
    if axis_name is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"name the mesh axis to split T along: the mesh has axes {mesh.axis_names}")
        (axis_name,) = mesh.axis_names
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh, whose axes are {mesh.axis_names}")
    n_devices = mesh.shape[axis_name]
    if q.shape[-3] % n_devices or q.shape[-3] == 0:
        raise ValueError(
            f"T = {q.shape[-3]} must be a positive multiple of the {n_devices} devices along mesh axis"
            f" {axis_name!r}; pad the sequence and mark the padding with mask"
        )
    if mask is None:
        mask = xp.ones(q.shape[:-2], dtype=xp.bool)
    sequence, mask_spec = _specs(axis_name, q.ndim)
    q, k, v = _placed((q, k, v), mesh, sequence)
    return xp, q, k, v, _placed(mask, mesh, mask_spec), out_dtype, mesh, axis_name


def _specs(axis_name: str, ndim: int) -> tuple[Any, Any]:
    """Partition specs splitting T: for (..., T, H, L) arrays and for the (..., T) mask."""
    from jax.sharding import PartitionSpec

    batch = (None,) * (ndim - 3)
    return PartitionSpec(*batch, axis_name, None, None), PartitionSpec(*batch, axis_name)


def _placed(arrays: Any, mesh: Any, spec: Any) -> Any:
    """Arrays (any pytree of them) laid out on the mesh as ``spec`` says; shard_map takes them as they are."""
    import jax
    from jax.sharding import NamedSharding

    return jax.device_put(arrays, NamedSharding(mesh, spec))


@cache
def _sharded_causal(mesh: Any, axis_name: str, ndim: int, chunk_size: int) -> Any:
    """The compiled sharded causal form for one mesh axis, rank and chunk size."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    def on_each_device(q: Any, k: Any, v: Any, mask: Any, state: LatteState) -> tuple[Any, LatteState]:
        k, v = mask_keys_and_values(jnp, mask, k, v)
        local = jax.lax.all_gather(summarise(jnp, k, v), axis_name)  # n states: [n, ..., H, L(, D)]
        # [state, local_0, ..., local_(n-1)] scanned: element d is everything before device d's tokens.
        scanned = jax.lax.associative_scan(
            combine, jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), state, local)
        )
        before = jax.tree.map(lambda s: s[jax.lax.axis_index(axis_name)], scanned)
        y = _causal_by_chunks(q, k, v, before, chunk_size)
        return mask_output(jnp, mask, y), jax.tree.map(lambda s: s[-1], scanned)

    sequence, mask_spec = _specs(axis_name, ndim)
    return jax.jit(
        jax.shard_map(
            on_each_device,
            mesh=mesh,
            in_specs=(sequence, sequence, sequence, mask_spec, PartitionSpec()),
            out_specs=(sequence, PartitionSpec()),
            # The final state is the same on every device (each scans the same gathered states),
            # which JAX cannot infer through all_gather.
            check_vma=False,
        )
    )


@cache
def _sharded_bidirectional(mesh: Any, axis_name: str, ndim: int) -> Any:
    """The compiled sharded bidirectional form for one mesh axis and rank."""
    import jax
    import jax.numpy as jnp

    def on_each_device(q: Any, k: Any, v: Any, mask: Any) -> Any:
        k, v = mask_keys_and_values(jnp, mask, k, v)
        local = summarise(jnp, k, v)
        # The max is only a shift (any value gives the same ratios), and pmax has no derivative rule.
        running_max = jax.lax.pmax(jax.lax.stop_gradient(local.running_max), axis_name)  # [..., H, L]
        rescale = jnp.exp(local.running_max - finite_or_zero(jnp, running_max))
        total = LatteState(
            running_max,
            jax.lax.psum(local.normaliser * rescale, axis_name),
            jax.lax.psum(local.numerator * rescale[..., None], axis_name),
        )
        return read_queries(jnp, q, mask, total)

    sequence, mask_spec = _specs(axis_name, ndim)
    return jax.jit(
        jax.shard_map(on_each_device, mesh=mesh, in_specs=(sequence, sequence, sequence, mask_spec), out_specs=sequence)
    )


def _causal_by_chunks(q: Any, k: Any, v: Any, state: LatteState, chunk_size: int) -> Any:
    """The chunk loop of :func:`latte_ref.causal` as a ``lax.scan``: (..., T, H, L/D) -> y (..., T, H, D).

    k must already be masked (``-inf`` for padding). T is padded to a multiple of C with
    tokens that are no key (k = -inf, v = 0), whose outputs are dropped.
    """
    import jax
    import jax.numpy as jnp

    n_tokens = q.shape[-3]
    pad = [(0, 0)] * q.ndim
    pad[-3] = (0, -n_tokens % chunk_size)
    q, v = jnp.pad(q, pad), jnp.pad(v, pad)
    k = jnp.pad(k, pad, constant_values=-jnp.inf)

    def by_chunk(x: Any) -> Any:  # [..., T, H, X] -> [T / C, ..., C, H, X]
        return jnp.moveaxis(x.reshape(*x.shape[:-3], -1, chunk_size, *x.shape[-2:]), -4, 0)

    def one_chunk(state: LatteState, chunk: tuple[Any, Any, Any]) -> tuple[LatteState, Any]:
        y, state = causal_chunk(jnp, *chunk, state)
        return state, y

    _, y = jax.lax.scan(one_chunk, state, (by_chunk(q), by_chunk(k), by_chunk(v)))  # [T / C, ..., C, H, D]
    y = jnp.moveaxis(y, 0, -4)
    return y.reshape(*y.shape[:-4], -1, *y.shape[-2:])[..., :n_tokens, :, :]
