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

Packed rows (``segment_ids``, sharded as the mask) gather the devices' first and last ids,
so each device knows whether a segment starts at its first token or ends at its last, and
scan pairs (restarts, state of the device's last piece) with the associative
:func:`latte_ref.state.segmented_combine`: ``before_d`` is the state of the segment that
runs into device d, however many devices it spans. Bidirectionally a second, backward scan
of (a segment ends, state of the first piece) gives ``after_d``, and each device completes
its first and last pieces with them (:func:`latte_ref.parallel.dask.packed_read`).

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

from .._array import Array, finite_or_zero, mask_keys_and_values, mask_output
from .._checks import _prepare_qkv, check_chunk_size, check_flag
from ..causal import DEFAULT_CHUNK_SIZE, Pieces, causal_chunk
from ..segments import check_segment_ids, segment_starts
from ..state import LatteState, check_state, combine, empty_state, read_queries, restart, summarise
from .dask import backward_piece, forward_piece, packed_read, segmented_merge

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
    segment_ids: Array | None = None,
) -> Array | tuple[Array, LatteState]:
    """:func:`latte_ref.causal` with T sharded over the mesh axis ``axis_name``.

    Parameters
    ----------
    q, k : JAX array, shape (..., T, H, L)
    v : JAX array, shape (..., T, H, D)
    mask, segment_ids, chunk_size, state, return_state
        As for :func:`latte_ref.causal`; ``state`` and the returned state are replicated, and
        ``segment_ids`` (..., T) is sharded along T as the mask is. Segments may cross devices.
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
    segment_ids = _segment_ids(xp, segment_ids, q, mesh, axis_name)
    if state is None:
        state = empty_state(xp, q, v, q.dtype)
    else:
        state = check_state(xp, state, q, v, q.dtype)
    state = _placed(state, mesh, PartitionSpec())  # replicated
    # A chunk longer than a device's slice would only be padding.
    chunk_size = min(chunk_size, q.shape[-3] // mesh.shape[axis_name])
    if segment_ids is None:
        y, final = _sharded_causal(mesh, axis_name, q.ndim, chunk_size)(q, k, v, mask, state)
    else:
        y, final = _sharded_packed_causal(mesh, axis_name, q.ndim, chunk_size)(q, k, v, mask, segment_ids, state)
    y = xp.astype(y, out_dtype)
    return (y, final) if return_state else y


def bidirectional(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    mesh: Any = None,
    axis_name: str | None = None,
    segment_ids: Array | None = None,
) -> Array:
    """:func:`latte_ref.bidirectional` with T sharded over the mesh axis ``axis_name``.

    Arguments as for :func:`causal`; returns y (..., T, H, D), sharded along T.
    """
    xp, q, k, v, mask, out_dtype, mesh, axis_name = _prepare(q, k, v, mask, mesh, axis_name)
    segment_ids = _segment_ids(xp, segment_ids, q, mesh, axis_name)
    if segment_ids is None:
        y = _sharded_bidirectional(mesh, axis_name, q.ndim)(q, k, v, mask)
    else:
        y = _sharded_packed_bidirectional(mesh, axis_name, q.ndim)(q, k, v, mask, segment_ids)
    return xp.astype(y, out_dtype)


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


def _segment_ids(xp: Any, segment_ids: Array | None, q: Array, mesh: Any, axis_name: str) -> Array | None:
    """The caller's ids (..., T) checked as the core checks them, and sharded along T as the mask is."""
    if segment_ids is None:
        return None
    check_segment_ids(xp, segment_ids, q.shape[:-2], like=q)
    return _placed(segment_ids, mesh, _specs(axis_name, q.ndim)[1])


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


@cache
def _sharded_packed_causal(mesh: Any, axis_name: str, ndim: int, chunk_size: int) -> Any:
    """:func:`_sharded_causal` for packed rows: a segmented scan of the devices' (restarts, last piece) pairs."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    n_devices = mesh.shape[axis_name]

    def on_each_device(q: Any, k: Any, v: Any, mask: Any, ids: Any, state: LatteState) -> tuple[Any, LatteState]:
        k, v = mask_keys_and_values(jnp, mask, k, v)
        starts_here, _ = _edges(ids, axis_name, n_devices)
        local = jax.lax.all_gather(forward_piece(jnp, k, v, None, ids, starts_here), axis_name)  # [n, ...]
        # [(no restart, state), local_0, ..., local_(n-1)] scanned: element d is what reaches device d.
        scanned = jax.lax.associative_scan(segmented_merge, _prepend((jnp.zeros_like(starts_here), state), local))
        _, before = _at(scanned, jax.lax.axis_index(axis_name))
        before = restart(jnp, before, starts_here)
        y = _causal_by_chunks(q, k, v, before, chunk_size, starts=segment_starts(jnp, ids))
        return mask_output(jnp, mask, y), _at(scanned, -1)[1]

    sequence, mask_spec = _specs(axis_name, ndim)
    return jax.jit(
        jax.shard_map(
            on_each_device,
            mesh=mesh,
            in_specs=(sequence, sequence, sequence, mask_spec, mask_spec, PartitionSpec()),
            out_specs=(sequence, PartitionSpec()),
            check_vma=False,  # the final state is the same on every device, as in _sharded_causal
        )
    )


@cache
def _sharded_packed_bidirectional(mesh: Any, axis_name: str, ndim: int) -> Any:
    """The sharded bidirectional form for packed rows: segmented scans of pieces forwards and backwards.

    Device d completes its first piece with ``before_d``, the state of that segment on the
    devices before it, and its last piece with ``after_d``, that on the devices after it
    (see :func:`latte_ref.parallel.dask.packed_read`).
    """
    import jax
    import jax.numpy as jnp

    n_devices = mesh.shape[axis_name]

    def on_each_device(q: Any, k: Any, v: Any, mask: Any, ids: Any) -> Any:
        k_in, v_in = mask_keys_and_values(jnp, mask, k, v)
        starts_here, ends_here = _edges(ids, axis_name, n_devices)
        forward = jax.lax.all_gather(forward_piece(jnp, k_in, v_in, None, ids, starts_here), axis_name)
        backward = jax.lax.all_gather(backward_piece(jnp, k_in, v_in, None, ids, ends_here), axis_name)
        empty = (jnp.zeros_like(starts_here), empty_state(jnp, q, v, q.dtype))
        # before_d: the forward scan up to device d - 1; after_d: the backward scan from device d + 1.
        before = _prepend(empty, jax.lax.associative_scan(segmented_merge, forward))
        after = _append(jax.lax.associative_scan(segmented_merge, backward, reverse=True), empty)
        device = jax.lax.axis_index(axis_name)
        state_before = restart(jnp, _at(before, device)[1], starts_here)
        state_after = restart(jnp, _at(after, device + 1)[1], ends_here)
        return packed_read(jnp, q, k, v, mask, None, ids, state_before, state_after)

    sequence, mask_spec = _specs(axis_name, ndim)
    return jax.jit(
        jax.shard_map(
            on_each_device,
            mesh=mesh,
            in_specs=(sequence, sequence, sequence, mask_spec, mask_spec),
            out_specs=sequence,
            check_vma=False,
        )
    )


def _edges(ids: Any, axis_name: str, n_devices: int) -> tuple[Any, Any]:
    """(...) bool each: this device's first token begins a segment; a segment ends at its last token.

    The ids (..., T_d) of the neighbouring devices' edge tokens come from an all_gather of
    every device's first and last ids.
    """
    import jax
    import jax.numpy as jnp

    device = jax.lax.axis_index(axis_name)
    firsts, lasts = jax.lax.all_gather((ids[..., 0], ids[..., -1]), axis_name)  # [n, ...] each
    previous_last = lasts[jnp.maximum(device - 1, 0)]
    next_first = firsts[jnp.minimum(device + 1, n_devices - 1)]
    return (device > 0) & (ids[..., 0] != previous_last), (device < n_devices - 1) & (ids[..., -1] != next_first)


def _prepend(first: Any, rest: Any) -> Any:
    """The pytree ``first`` put before the stacked pytree ``rest`` (leading axis n) -> n + 1."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


def _append(rest: Any, last: Any) -> Any:
    """The pytree ``last`` put after the stacked pytree ``rest`` (leading axis n) -> n + 1."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), rest, last)


def _at(stacked: Any, i: Any) -> Any:
    """Element ``i`` of a stacked pytree."""
    import jax

    return jax.tree.map(lambda a: a[i], stacked)


def _causal_by_chunks(q: Any, k: Any, v: Any, state: LatteState, chunk_size: int, starts: Any = None) -> Any:
    """The chunk loop of :func:`latte_ref.causal` as a ``lax.scan``: (..., T, H, L/D) -> y (..., T, H, D).

    k must already be masked (``-inf`` for padding). T is padded to a multiple of C with
    tokens that are no key (k = -inf, v = 0), whose outputs are dropped. starts: (..., T) bool,
    True where a packed segment begins, or None; every chunk then keeps to its pieces.
    """
    import jax
    import jax.numpy as jnp

    n_tokens = q.shape[-3]
    pad = [(0, 0)] * q.ndim
    pad[-3] = (0, -n_tokens % chunk_size)
    q, v = jnp.pad(q, pad), jnp.pad(v, pad)
    k = jnp.pad(k, pad, constant_values=-jnp.inf)
    if starts is None:
        starts = jnp.zeros(q.shape[:-2], dtype=bool)
        pieces = False
    else:
        starts = jnp.pad(starts, pad[:-2])
        pieces = True

    def by_chunk(x: Any) -> Any:  # [..., T, H, X] -> [T / C, ..., C, H, X]
        return jnp.moveaxis(x.reshape(*x.shape[:-3], -1, chunk_size, *x.shape[-2:]), -4, 0)

    def one_chunk(state: LatteState, chunk: tuple[Any, Any, Any, Any]) -> tuple[LatteState, Any]:
        q, k, v, starts = chunk
        y, state = causal_chunk(jnp, q, k, v, state, pieces=Pieces.of(jnp, starts) if pieces else None)
        return state, y

    chunk_starts = jnp.moveaxis(starts.reshape(*starts.shape[:-1], -1, chunk_size), -2, 0)  # [T / C, ..., C]
    _, y = jax.lax.scan(one_chunk, state, (by_chunk(q), by_chunk(k), by_chunk(v), chunk_starts))
    y = jnp.moveaxis(y, 0, -4)
    return y.reshape(*y.shape[:-4], -1, *y.shape[-2:])[..., :n_tokens, :, :]
