"""Sequence-parallel Latte on JAX: T sharded across devices equals the single-device result.

JAX fixes its number of CPU devices when it starts, so the tests that need several run in a
subprocess started by :func:`test_on_four_cpu_devices`, with
``--xla_force_host_platform_device_count=4``; in the main test process they are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import latte_ref

jax = pytest.importorskip("jax")

N_DEVICES = 4
IN_SUBPROCESS = os.environ.get("LATTE_REF_SHARDED_DEVICES") == str(N_DEVICES)
several_devices = pytest.mark.skipif(
    not IN_SUBPROCESS, reason=f"runs in the subprocess of test_on_four_cpu_devices, with {N_DEVICES} CPU devices"
)

B, T, H, L, D = 2, 48, 3, 4, 5  # T / 4 devices = 12 tokens each
TOLERANCE = 1e-10


def test_on_four_cpu_devices() -> None:
    """Run this file's tests again in a process whose JAX has four CPU devices."""
    if IN_SUBPROCESS:
        pytest.skip("already in the subprocess")
    env = {
        **os.environ,
        "LATTE_REF_SHARDED_DEVICES": str(N_DEVICES),
        "JAX_PLATFORMS": "cpu",  # the flag below adds CPU devices; a GPU would otherwise be the default
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={N_DEVICES}",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


@pytest.fixture
def sharded() -> Any:
    from latte_ref.parallel import jax as sequence_parallel_jax

    assert jax.device_count() == N_DEVICES
    return sequence_parallel_jax


def _inputs(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    q, k = rng.normal(size=(2, B, T, H, L)) * 3
    return q, k, rng.normal(size=(B, T, H, D)), rng.random((B, T)) > 0.25


def _error(result: Any, reference: Any) -> float:
    reference = np.asarray(reference)
    return float(np.max(np.abs(np.asarray(result) - reference)) / np.max(np.abs(reference)))


@several_devices
@pytest.mark.parametrize("chunk_size", [5, 12, 64], ids=lambda c: f"chunk-{c}")
def test_causal_equals_one_device(sharded: Any, chunk_size: int, rng: np.random.Generator) -> None:
    """Chunks that do not divide a device's 12 tokens, that do, and that are longer than them."""
    q, k, v, mask = _inputs(rng)
    jq, jk, jv, jmask = map(jax.numpy.asarray, (q, k, v, mask))
    y, state = sharded.causal(jq, jk, jv, mask=jmask, chunk_size=chunk_size, return_state=True)
    y_one, state_one = latte_ref.causal(jq, jk, jv, mask=jmask, return_state=True)
    assert _error(y, y_one) <= TOLERANCE
    assert _error(y, latte_ref.causal(q, k, v, mask=mask)) <= TOLERANCE
    for got, expected in zip(state, state_one, strict=True):
        assert _error(got, expected) <= TOLERANCE


@several_devices
def test_outputs_stay_sharded_along_t(sharded: Any, rng: np.random.Generator) -> None:
    q, k, v, mask = map(jax.numpy.asarray, _inputs(rng))
    for y in (sharded.causal(q, k, v, mask=mask), sharded.bidirectional(q, k, v, mask=mask)):
        assert len(y.sharding.device_set) == N_DEVICES
        assert {shard.data.shape for shard in y.addressable_shards} == {(B, T // N_DEVICES, H, D)}


@several_devices
def test_bidirectional_equals_one_device(sharded: Any, rng: np.random.Generator) -> None:
    q, k, v, mask = map(jax.numpy.asarray, _inputs(rng))
    assert _error(sharded.bidirectional(q, k, v, mask=mask), latte_ref.bidirectional(q, k, v, mask=mask)) <= TOLERANCE


@several_devices
def test_state_in_and_a_two_axis_mesh(sharded: Any, rng: np.random.Generator) -> None:
    """A 2 x 2 mesh, T split over its 'sequence' axis, continuing from a given state."""
    q, k, v, mask = _inputs(rng)
    mesh = jax.make_mesh((2, 2), ("data", "sequence"))
    head = latte_ref.causal(q[:, :8], k[:, :8], v[:, :8], mask=mask[:, :8], return_state=True)[1]
    state = latte_ref.LatteState(*map(jax.numpy.asarray, head))
    tail = [jax.numpy.asarray(x[:, 8:]) for x in (q, k, v)]
    y = sharded.causal(*tail, mask=jax.numpy.asarray(mask[:, 8:]), state=state, mesh=mesh, axis_name="sequence")
    assert _error(y, latte_ref.causal(q, k, v, mask=mask)[:, 8:]) <= TOLERANCE
    with pytest.raises(ValueError, match="name the mesh axis"):
        sharded.causal(*tail, mesh=mesh)


@several_devices
def test_gradients_equal_one_device(sharded: Any, rng: np.random.Generator) -> None:
    q, k, v, mask = map(jax.numpy.asarray, _inputs(rng))

    def loss(form: Any) -> Any:
        return lambda q, k, v: (form(q, k, v, mask=mask) ** 2).sum()

    for form in ("causal", "bidirectional"):
        grads = jax.grad(loss(getattr(sharded, form)), argnums=(0, 1, 2))(q, k, v)
        grads_one = jax.grad(loss(getattr(latte_ref, form)), argnums=(0, 1, 2))(q, k, v)
        for got, expected in zip(grads, grads_one, strict=True):
            assert _error(got, expected) <= 1e-9, form


@several_devices
def test_the_core_takes_sharded_arrays(sharded: Any, rng: np.random.Generator) -> None:
    """Arrays sharded over several devices (such as the outputs here) are valid input to the core."""
    from jax.sharding import NamedSharding, PartitionSpec

    q, k, v, mask = _inputs(rng)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("sequence",))
    placed = [jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "sequence"))) for x in (q, k, v, mask)]
    y = latte_ref.causal(*placed[:3], mask=placed[3])
    assert _error(y, latte_ref.causal(q, k, v, mask=mask)) <= TOLERANCE


@several_devices
def test_16_bit_inputs(sharded: Any, rng: np.random.Generator) -> None:
    q, k, v, _ = _inputs(rng)
    y = sharded.causal(*(jax.numpy.asarray(x, dtype=jax.numpy.bfloat16) for x in (q, k, v)))
    assert y.dtype == jax.numpy.bfloat16
    assert _error(y.astype(np.float64), latte_ref.causal(q, k, v)) <= 2e-2


@several_devices
def test_a_length_the_devices_do_not_divide_is_refused(sharded: Any, rng: np.random.Generator) -> None:
    q, k, v, _ = (jax.numpy.asarray(x[:, :-1]) for x in _inputs(rng))
    with pytest.raises(ValueError, match="multiple of the 4 devices"):
        sharded.causal(q, k, v)


# -- packed rows: segment_ids sharded as the mask ----------------------------------------------------------------

# Segment lengths per row (T = 48, 12 tokens per device): in row 0 segments cross the device boundaries
# at 24 and 36 and one has a single token; in row 1 one spans three devices and another begins at 36.
SEGMENT_LENGTHS = ([9, 1, 10, 7, 3, 18], [1, 1, 30, 4, 12])
PACKED_TOLERANCE = 1e-12


def _segment_ids() -> np.ndarray:
    return np.stack([np.repeat(5 + 2 * np.arange(len(n)), n) for n in SEGMENT_LENGTHS])


@several_devices
@pytest.mark.parametrize("chunk_size", [5, 12, 64], ids=lambda c: f"chunk-{c}")
def test_packed_causal_equals_the_definition(sharded: Any, chunk_size: int, rng: np.random.Generator) -> None:
    q, k, v, mask = _inputs(rng)
    ids = _segment_ids()
    y, state = sharded.causal(
        *map(jax.numpy.asarray, (q, k, v)),
        mask=jax.numpy.asarray(mask),
        segment_ids=jax.numpy.asarray(ids),
        chunk_size=chunk_size,
        return_state=True,
    )
    assert _error(y, latte_ref.definition(q, k, v, mask=mask, segment_ids=ids, causal=True)) <= PACKED_TOLERANCE
    state_ref = latte_ref.causal(q, k, v, mask=mask, segment_ids=ids, return_state=True)[1]
    for got, expected in zip(state, state_ref, strict=True):
        assert _error(got, expected) <= PACKED_TOLERANCE


@several_devices
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_packed_bidirectional_equals_the_definition(sharded: Any, masked: bool, rng: np.random.Generator) -> None:
    q, k, v, mask = _inputs(rng)
    mask = mask if masked else None
    ids = _segment_ids()
    y = sharded.bidirectional(
        *map(jax.numpy.asarray, (q, k, v)),
        mask=None if mask is None else jax.numpy.asarray(mask),
        segment_ids=jax.numpy.asarray(ids),
    )
    assert y.sharding.spec == sharded._specs("sequence", 4)[0]
    assert _error(y, latte_ref.definition(q, k, v, mask=mask, segment_ids=ids, causal=False)) <= PACKED_TOLERANCE


@several_devices
@pytest.mark.parametrize("lengths", [[1] * T, [12] * 4, [T]], ids=["one-token", "one-per-device", "one-segment"])
def test_packed_extremes(sharded: Any, lengths: list[int], rng: np.random.Generator) -> None:
    """Segments of one token each, one segment per device (every device begins one), and one segment."""
    q, k, v, mask = _inputs(rng)
    ids = np.broadcast_to(np.repeat(np.arange(len(lengths)), lengths), (B, T))
    arguments = (*map(jax.numpy.asarray, (q, k, v)),)
    for causal, form in ((True, sharded.causal), (False, sharded.bidirectional)):
        y = form(*arguments, mask=jax.numpy.asarray(mask), segment_ids=jax.numpy.asarray(ids))
        y_ref = latte_ref.definition(q, k, v, mask=mask, segment_ids=ids, causal=causal)
        assert _error(y, y_ref) <= PACKED_TOLERANCE, form.__name__


@several_devices
def test_packed_state_in_and_a_two_axis_mesh(sharded: Any, rng: np.random.Generator) -> None:
    """A 2 x 2 mesh; the state after token 8 (inside a segment of each row) carries into the packed rest."""
    q, k, v, mask = _inputs(rng)
    ids = _segment_ids()
    mesh = jax.make_mesh((2, 2), ("data", "sequence"))
    head = latte_ref.causal(q[:, :8], k[:, :8], v[:, :8], mask=mask[:, :8], segment_ids=ids[:, :8], return_state=True)
    state = latte_ref.LatteState(*map(jax.numpy.asarray, head[1]))
    tail = [jax.numpy.asarray(x[:, 8:]) for x in (q, k, v)]
    y, final = sharded.causal(
        *tail,
        mask=jax.numpy.asarray(mask[:, 8:]),
        segment_ids=jax.numpy.asarray(ids[:, 8:]),
        state=state,
        mesh=mesh,
        axis_name="sequence",
        return_state=True,
    )
    y_ref, final_ref = latte_ref.causal(q, k, v, mask=mask, segment_ids=ids, return_state=True)
    assert _error(y, y_ref[:, 8:]) <= PACKED_TOLERANCE
    for got, expected in zip(final, final_ref, strict=True):
        assert _error(got, expected) <= PACKED_TOLERANCE


@several_devices
def test_packed_gradients_equal_the_definition(sharded: Any, rng: np.random.Generator) -> None:
    """Gradients through both packed forms at once (one compilation each side), against the dense definition."""
    q, k, v, mask = map(jax.numpy.asarray, _inputs(rng))
    ids = jax.numpy.asarray(_segment_ids())

    def loss(causal: Any, bidirectional: Any) -> Any:
        def both(q: Any, k: Any, v: Any) -> Any:
            y_causal, y_bidirectional = (f(q, k, v, mask=mask, segment_ids=ids) for f in (causal, bidirectional))
            return (y_causal**2).sum() + (y_bidirectional**3).sum()

        return jax.jit(jax.grad(both, argnums=(0, 1, 2)))

    def definition(causal: bool) -> Any:
        return lambda *arrays, **options: latte_ref.definition(*arrays, causal=causal, **options)

    grads = loss(sharded.causal, sharded.bidirectional)(q, k, v)
    grads_ref = loss(definition(True), definition(False))(q, k, v)
    for got, expected in zip(grads, grads_ref, strict=True):
        assert _error(got, expected) <= 1e-12


@several_devices
def test_packed_decreasing_ids_are_refused(sharded: Any, rng: np.random.Generator) -> None:
    q, k, v, _ = map(jax.numpy.asarray, _inputs(rng))
    ids = jax.numpy.asarray(_segment_ids()[:, ::-1])
    with pytest.raises(ValueError, match="must not decrease"):
        sharded.causal(q, k, v, segment_ids=ids)
