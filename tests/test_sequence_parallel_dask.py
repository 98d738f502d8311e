"""Sequence-parallel Latte on Dask: equal to the NumPy core, and a graph that is parallel along T.

The graph is checked for what the design promises: its depth grows with log2 of the number
of blocks along T (the scan of states is a tree, not a chain), and no task holds more than
one block of the sequence plus states. A last test runs it on a LocalCluster of worker
processes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from array_api_extra.testing import lazy_xp_function, patch_lazy_xp_functions

import latte_ref
from latte_ref.state import LatteState

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

# Tagged for test_building_the_graph_computes_nothing: within patch_lazy_xp_functions, a call that
# computes a Dask graph fails (array-api-extra's counting scheduler, allowing none).
for _function in (latte_ref.causal, latte_ref.bidirectional):
    lazy_xp_function(_function, allow_dask_compute=False)
lazy_xp_modules = [latte_ref]

B, T, H, L, D = 2, 45, 3, 4, 5
TOLERANCE = 1e-10  # float64, relative to the largest output


def _inputs(rng: np.random.Generator, tokens: int = T) -> tuple[np.ndarray, ...]:
    q, k = rng.normal(size=(2, B, tokens, H, L)) * 3
    return q, k, rng.normal(size=(B, tokens, H, D)), rng.random((B, tokens)) > 0.25


def _dask(arrays: tuple[np.ndarray, ...], chunks: tuple[int, ...]) -> tuple[Any, ...]:
    """q, k, v, mask as Dask arrays in blocks of ``chunks`` = (batch, T, H) (L and D whole)."""
    q, k, v, mask = arrays
    # inline_array: each block's task holds its own slice, not a dependency on the whole NumPy array
    return (
        da.from_array(q, chunks=(*chunks, L), inline_array=True),
        da.from_array(k, chunks=(*chunks, L), inline_array=True),
        da.from_array(v, chunks=(*chunks, D), inline_array=True),
        da.from_array(mask, chunks=chunks[:2], inline_array=True),
    )


def _error(result: Any, reference: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(result.compute(scheduler="sync")) - reference)) / np.max(np.abs(reference)))


# Blocks along T of 9 tokens (not a multiple of chunk_size=4), 8 (a multiple), 1 token, and the whole sequence;
# blocks along the batch axis and the heads too.
CHUNKINGS = [(1, 9, 3), (2, 8, 3), (2, 1, 1), (1, T, 2), (2, (20, 5, 11, 9), 3)]


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_causal_matches_numpy(chunks: tuple[Any, ...], masked: bool, rng: np.random.Generator) -> None:
    arrays = _inputs(rng)
    q, k, v, mask = _dask(arrays, chunks)
    mask, arrays = (mask, arrays) if masked else (None, (*arrays[:3], None))
    y, state = latte_ref.causal(q, k, v, mask=mask, chunk_size=4, return_state=True)
    y_ref, state_ref = latte_ref.causal(*arrays[:3], mask=arrays[3], chunk_size=4, return_state=True)
    assert isinstance(y, da.Array) and y.chunks[:3] == q.chunks[:3]
    assert _error(y, y_ref) <= TOLERANCE
    for field, reference in zip(LatteState._fields, state_ref, strict=True):
        assert _error(getattr(state, field), reference) <= TOLERANCE, field


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=str)
def test_bidirectional_matches_numpy(chunks: tuple[Any, ...], rng: np.random.Generator) -> None:
    arrays = _inputs(rng)
    q, k, v, mask = _dask(arrays, chunks)
    y = latte_ref.bidirectional(q, k, v, mask=mask)
    assert isinstance(y, da.Array)
    assert _error(y, latte_ref.bidirectional(*arrays[:3], mask=arrays[3])) <= TOLERANCE


def test_state_carries_between_calls(rng: np.random.Generator) -> None:
    """Two calls, the second given the first's state, equal one call over the whole sequence.

    The second call's batch and heads are chunked differently from the state it is given.
    """
    arrays = _inputs(rng)
    q, k, v, mask = _dask(tuple(x[:, :20] for x in arrays), (1, 7, 2))
    head, state = latte_ref.causal(q, k, v, mask=mask, return_state=True)
    q, k, v, mask = _dask(tuple(x[:, 20:] for x in arrays), (2, 6, 3))
    tail = latte_ref.causal(q, k, v, mask=mask, state=state)
    y = da.concatenate([head, tail], axis=1)
    assert _error(y, latte_ref.causal(*arrays[:3], mask=arrays[3])) <= TOLERANCE


def test_16_bit_inputs_are_computed_in_float32(rng: np.random.Generator) -> None:
    q, k, v = (x.astype(np.float16) for x in _inputs(rng)[:3])
    dq, dk, dv = (da.from_array(x, chunks=(1, 10, H, x.shape[-1])) for x in (q, k, v))
    y, state = latte_ref.causal(dq, dk, dv, return_state=True)
    assert y.dtype == np.float16 and state.numerator.dtype == np.float32
    assert _error(y.astype(np.float64), latte_ref.causal(q, k, v).astype(np.float64)) <= 1e-3
    y = latte_ref.bidirectional(dq, dk, dv)
    assert y.dtype == np.float16
    assert _error(y.astype(np.float64), latte_ref.bidirectional(q, k, v).astype(np.float64)) <= 1e-3


def test_a_nan_stays_where_the_core_keeps_it(rng: np.random.Generator) -> None:
    """A nan key in block 2 of 5 spoils the outputs from its token on, exactly as in the core."""
    arrays = _inputs(rng)
    arrays[1][:, 22, 1, 2] = np.nan
    arrays[3][:, 22] = True  # a real token: padding would hide the nan
    q, k, v, mask = _dask(arrays, (1, 9, 3))
    y = latte_ref.causal(q, k, v, mask=mask).compute(scheduler="sync")
    y_ref = latte_ref.causal(*arrays[:3], mask=arrays[3])
    assert np.array_equal(np.isnan(y), np.isnan(y_ref)) and not np.isnan(y[:, :22]).any()
    finite = ~np.isnan(y_ref)
    assert np.max(np.abs(y[finite] - y_ref[finite])) <= TOLERANCE * np.max(np.abs(y_ref[finite]))


def test_empty_sequence(rng: np.random.Generator) -> None:
    q, k, v, mask = _dask(_inputs(rng, tokens=0), (1, 1, 3))
    y, state = latte_ref.causal(q, k, v, mask=mask, return_state=True)
    assert y.compute(scheduler="sync").shape == (B, 0, H, D)
    assert np.all(np.isneginf(state.running_max.compute())) and not np.any(state.numerator.compute())


def test_unknown_chunk_sizes_are_refused(rng: np.random.Generator) -> None:
    q, k, v, _ = _dask(_inputs(rng), (1, 9, 3))
    keep = da.from_array(np.arange(T) % 2 == 0, chunks=9)
    with pytest.raises(ValueError, match="unknown length"):
        latte_ref.causal(q[:, keep], k[:, keep], v[:, keep])


# -- packed rows: segment_ids chunked like the mask -------------------------------------------------------------

# Segment lengths per row (T = 45 each): row 0 has a segment of one token at 9 and starts at 9, 10, 20, 27
# and 30; row 1 begins with two one-token segments. Blocks of 9, of 8 and of 1 token cut segments and begin
# at starts; the blocks (9, 1, 10, 7, 3, 15) begin exactly at row 0's starts; empty blocks are skipped.
SEGMENT_LENGTHS = ([9, 1, 10, 7, 3, 15], [1, 1, 20, 8, 15])
PACKED_CHUNKINGS = [*CHUNKINGS, (1, (9, 1, 10, 7, 3, 15), 3), (2, (0, 10, 0, 35), 1)]
PACKED_TOLERANCE = 1e-12  # float64, relative to the largest output


def _segment_ids() -> np.ndarray:
    """(B, T) ids: each row's segments numbered 7, 10, 13, ... (any non-decreasing ids will do)."""
    return np.stack([np.repeat(7 + 3 * np.arange(len(n)), n) for n in SEGMENT_LENGTHS])


def _dask_ids(ids: np.ndarray, chunks: tuple[Any, ...]) -> Any:
    return da.from_array(ids, chunks=chunks[:2], inline_array=True)


@pytest.mark.parametrize("chunks", PACKED_CHUNKINGS, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_packed_causal_matches_the_definition(chunks: tuple[Any, ...], masked: bool, rng: np.random.Generator) -> None:
    arrays, ids = _inputs(rng), _segment_ids()
    q, k, v, mask = _dask(arrays, chunks)
    mask, arrays = (mask, arrays) if masked else (None, (*arrays[:3], None))
    y, state = latte_ref.causal(q, k, v, mask=mask, segment_ids=_dask_ids(ids, chunks), chunk_size=4, return_state=True)
    assert isinstance(y, da.Array) and y.shape == (B, T, H, D)
    y_ref = latte_ref.definition(*arrays[:3], mask=arrays[3], segment_ids=ids, causal=True)
    assert _error(y, y_ref) <= PACKED_TOLERANCE
    state_ref = latte_ref.causal(*arrays[:3], mask=arrays[3], segment_ids=ids, return_state=True)[1]
    for field, reference in zip(LatteState._fields, state_ref, strict=True):
        assert _error(getattr(state, field), reference) <= PACKED_TOLERANCE, field


@pytest.mark.parametrize("chunks", PACKED_CHUNKINGS, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_packed_bidirectional_matches_the_definition(
    chunks: tuple[Any, ...], masked: bool, rng: np.random.Generator
) -> None:
    arrays, ids = _inputs(rng), _segment_ids()
    q, k, v, mask = _dask(arrays, chunks)
    mask, arrays = (mask, arrays) if masked else (None, (*arrays[:3], None))
    y = latte_ref.bidirectional(q, k, v, mask=mask, segment_ids=_dask_ids(ids, chunks))
    assert isinstance(y, da.Array) and y.shape == (B, T, H, D)
    y_ref = latte_ref.definition(*arrays[:3], mask=arrays[3], segment_ids=ids, causal=False)
    assert _error(y, y_ref) <= PACKED_TOLERANCE


def test_packed_bidirectional_with_a_key_mask(rng: np.random.Generator) -> None:
    """Padding and excluded keys: every query keeps its output, excluded keys are read by none."""
    arrays, ids = _inputs(rng), _segment_ids()
    key_mask = rng.random((B, T)) > 0.4
    q, k, v, mask = _dask(arrays, (1, 8, 3))
    y = latte_ref.bidirectional(
        q, k, v, mask=mask, key_mask=da.from_array(key_mask, chunks=(2, 15)), segment_ids=_dask_ids(ids, (1, 8))
    )
    y_ref = latte_ref.definition(*arrays[:3], mask=arrays[3], key_mask=key_mask, segment_ids=ids, causal=False)
    assert _error(y, y_ref) <= PACKED_TOLERANCE


@pytest.mark.parametrize("lengths", [[1] * T, [T]], ids=["every-token-a-segment", "one-segment"])
def test_packed_extremes(lengths: list[int], rng: np.random.Generator) -> None:
    """Segments of one token each (each attends to itself alone), and one segment (no packing at all)."""
    arrays = _inputs(rng)
    ids = np.broadcast_to(np.repeat(np.arange(len(lengths)), lengths), (B, T))
    q, k, v, mask = _dask(arrays, (1, 9, 3))
    for causal, form in ((True, latte_ref.causal), (False, latte_ref.bidirectional)):
        y = form(q, k, v, mask=mask, segment_ids=_dask_ids(ids, (1, 9)))
        y_ref = latte_ref.definition(*arrays[:3], mask=arrays[3], segment_ids=ids, causal=causal)
        assert _error(y, y_ref) <= PACKED_TOLERANCE, form.__name__


def test_packed_ids_are_runs_on_dask(rng: np.random.Generator) -> None:
    """Dask ids are not read: ids that decrease act as if each run were numbered in order."""
    arrays, ids = _inputs(rng), _segment_ids()
    q, k, v, mask = _dask(arrays, (1, 9, 3))
    shuffled = np.stack([np.repeat(np.array([3, 1, 3, 0, 5, 2])[: len(n)], n) for n in SEGMENT_LENGTHS])
    for causal, form in ((True, latte_ref.causal), (False, latte_ref.bidirectional)):
        y = form(q, k, v, mask=mask, segment_ids=_dask_ids(shuffled, (1, 9)))
        y_ref = latte_ref.definition(*arrays[:3], mask=arrays[3], segment_ids=ids, causal=causal)
        assert _error(y, y_ref) <= PACKED_TOLERANCE, form.__name__


@pytest.mark.parametrize("split", [21, 20, 27], ids=lambda t: f"split-{t}")
def test_packed_state_carries_between_calls(split: int, rng: np.random.Generator) -> None:
    """Two calls, the second given the first's state, equal the NumPy core's two calls.

    The given state is the history of the call's first segment. At 21 both rows are inside a
    segment, so the two calls also equal one over the whole row; at 20 and 27 row 0 begins one.
    """
    arrays, ids = _inputs(rng), _segment_ids()
    head_arrays, tail_arrays = tuple(x[:, :split] for x in arrays), tuple(x[:, split:] for x in arrays)
    q, k, v, mask = _dask(head_arrays, (1, 7, 2))
    head, state = latte_ref.causal(q, k, v, mask=mask, segment_ids=_dask_ids(ids[:, :split], (1, 7)), return_state=True)
    q, k, v, mask = _dask(tail_arrays, (2, 6, 3))
    tail = latte_ref.causal(q, k, v, mask=mask, segment_ids=_dask_ids(ids[:, split:], (2, 6)), state=state)
    y = da.concatenate([head, tail], axis=1)
    head_ref, state_ref = latte_ref.causal(
        *head_arrays[:3], mask=head_arrays[3], segment_ids=ids[:, :split], return_state=True
    )
    tail_ref = latte_ref.causal(*tail_arrays[:3], mask=tail_arrays[3], segment_ids=ids[:, split:], state=state_ref)
    assert _error(y, np.concatenate([head_ref, tail_ref], axis=1)) <= PACKED_TOLERANCE
    if split == 21:
        y_ref = latte_ref.definition(*arrays[:3], mask=arrays[3], segment_ids=ids, causal=True)
        assert _error(y, y_ref) <= PACKED_TOLERANCE


def test_packed_16_bit_and_empty_rows(rng: np.random.Generator) -> None:
    """16-bit inputs are computed in float32; a row of no tokens gives no outputs and the given state."""
    arrays, ids = _inputs(rng), _segment_ids()
    q, k, v = (x.astype(np.float16) for x in arrays[:3])
    dq, dk, dv = (da.from_array(x, chunks=(1, 10, H, x.shape[-1])) for x in (q, k, v))
    for causal, form in ((True, latte_ref.causal), (False, latte_ref.bidirectional)):
        y = form(dq, dk, dv, segment_ids=_dask_ids(ids, (1, 10)))
        y_ref = latte_ref.definition(*(x.astype(np.float64) for x in (q, k, v)), segment_ids=ids, causal=causal)
        assert y.dtype == np.float16 and _error(y.astype(np.float64), y_ref) <= 1e-3, form.__name__
    q, k, v, mask = _dask(_inputs(rng, tokens=0), (1, 1, 3))
    empty_ids = _dask_ids(np.zeros((B, 0), dtype=np.int32), (1, 1))
    state = LatteState(*(da.from_array(x) for x in latte_ref.causal(*arrays[:3], return_state=True)[1]))
    y, final = latte_ref.causal(q, k, v, mask=mask, segment_ids=empty_ids, state=state, return_state=True)
    assert y.compute(scheduler="sync").shape == (B, 0, H, D)
    assert all(np.array_equal(a.compute(), b.compute()) for a, b in zip(final, state, strict=True))
    assert latte_ref.bidirectional(q, k, v, segment_ids=empty_ids).compute(scheduler="sync").shape == (B, 0, H, D)


# -- the shape of the graph --------------------------------------------------------------------------------------


def _depth(collection: Any) -> int:
    """The number of tasks on the longest chain of the collection's graph."""
    from dask.core import get_deps

    dependencies, _ = get_deps(dict(collection.__dask_graph__()))
    memo: dict[Any, int] = {}

    def depth(key: Any) -> int:
        if key not in memo:
            memo[key] = 1 + max((depth(d) for d in dependencies[key]), default=0)
        return memo[key]

    return max(depth(key) for key in dependencies)


# Tasks on the longest chain beyond those of a sequence in two blocks, for n blocks along T.
EXTRA_DEPTH = {
    # the last block's outputs wait for a scan of the local states of the n - 1 blocks before it
    "causal": lambda n: math.ceil(math.log2(n - 1)),
    # every block's outputs wait for a tree that merges all n local states
    "bidirectional": lambda n: math.ceil(math.log2(n)) - 1,
}


@pytest.mark.parametrize("form", ["causal", "bidirectional"])
def test_graph_depth_grows_with_log2_of_the_blocks(form: str, rng: np.random.Generator) -> None:
    """Per doubling of the blocks along T, one more round of merges: a tree, not a chain."""
    function = getattr(latte_ref, form)
    depths = {}
    for n_blocks in (2, 3, 8, 17, 64):
        q, k, v, _ = _dask(_inputs(rng, tokens=2 * n_blocks), (B, 2, H))
        depths[n_blocks] = _depth(function(q, k, v))
    assert {n: d - depths[2] for n, d in depths.items()} == {n: EXTRA_DEPTH[form](n) for n in depths}


@pytest.mark.parametrize("form", ["causal", "bidirectional"])
def test_packed_graph_depth_grows_with_log2_of_the_blocks(form: str, rng: np.random.Generator) -> None:
    """Packed rows scan pairs of states as unpacked ones scan states: one more round per doubling.

    Measured from 3 blocks: with 2, the scanned pair comes from block 0 alone, which has no
    neighbour's id to wait for.
    """
    function = getattr(latte_ref, form)
    depths = {}
    for n_blocks in (3, 8, 17, 64):
        q, k, v, _ = _dask(_inputs(rng, tokens=2 * n_blocks), (B, 2, H))
        ids = da.from_array(np.broadcast_to(np.arange(2 * n_blocks) // 3, (B, 2 * n_blocks)), chunks=(B, 2))
        depths[n_blocks] = _depth(function(q, k, v, segment_ids=ids))
    assert {n: d - depths[3] for n, d in depths.items()} == {n: math.ceil(math.log2(n - 1)) - 1 for n in depths}


def test_no_task_holds_more_than_a_block_and_states(rng: np.random.Generator) -> None:
    """Run the graph, record every result's size, and bound what each task holds: its inputs and its result."""
    from dask.callbacks import Callback
    from dask.core import get_deps
    from dask.sizeof import sizeof

    block_tokens, n_blocks = 16, 8
    q, k, v, mask = _dask(_inputs(rng, tokens=block_tokens * n_blocks), (B, block_tokens, H))
    y, _ = latte_ref.causal(q, k, v, mask=mask, return_state=True)
    graph: dict[Any, Any] = {}
    sizes: dict[Any, int] = {}

    def start_state(dsk: Any, state: Any) -> None:  # the graph run, and the blocks it starts with as data
        graph.update(dsk)
        sizes.update((key, sizeof(value)) for key, value in state["cache"].items())

    def posttask(key: Any, result: Any, *_: Any) -> None:
        sizes[key] = sizeof(result)

    with Callback(start_state=start_state, posttask=posttask):
        y.persist(scheduler="sync")  # the blocks, without compute's final concatenation into one array
    dependencies, _ = get_deps(graph)
    held = {key: sizes[key] + sum(sizes[d] for d in dependencies[key]) for key in sizes}

    one_block = sum(x.blocks[0, 0, 0].nbytes for x in (q, k, v, y)) + mask.blocks[0, 0].nbytes
    state_bytes = B * H * L * (D + 2) * 8
    assert len(sizes) > 3 * n_blocks  # the graph has per-block tasks
    assert max(held.values()) <= one_block + 3 * state_bytes + 2048, max(held.items(), key=lambda kv: kv[1])


def test_building_the_graph_computes_nothing(rng: np.random.Generator, request: pytest.FixtureRequest) -> None:
    q, k, v, mask = _dask(_inputs(rng), (1, 9, 3))
    with patch_lazy_xp_functions(request, xp=da):
        assert hasattr(latte_ref.causal, "__wrapped__")  # the calls below go through the counting wrapper
        _, state = latte_ref.causal(q, k, v, mask=mask, return_state=True)
        latte_ref.causal(q, k, v, state=state)
        latte_ref.bidirectional(q, k, v, mask=mask)
        ids = _dask_ids(_segment_ids(), (1, 9))
        _, state = latte_ref.causal(q, k, v, mask=mask, segment_ids=ids, return_state=True)
        latte_ref.causal(q, k, v, segment_ids=ids, state=state)
        latte_ref.bidirectional(q, k, v, mask=mask, segment_ids=ids)


# -- on a cluster ------------------------------------------------------------------------------------------------


def test_on_a_local_cluster_of_worker_processes(rng: np.random.Generator) -> None:
    """Two worker processes on loopback, started and stopped here; results equal the NumPy core."""
    distributed = pytest.importorskip("distributed")
    arrays = _inputs(rng, tokens=96)
    q, k, v, mask = _dask(arrays, (1, 16, 3))
    ids = np.broadcast_to(np.arange(96) // 40, (B, 96))  # segments across the blocks of 16 tokens at 32 and 80
    forms = [latte_ref.causal, latte_ref.bidirectional]
    dask_ids = da.from_array(ids, chunks=(1, 16))
    results = [form(q, k, v, mask=mask) for form in forms] + [
        form(q, k, v, mask=mask, segment_ids=dask_ids) for form in forms
    ]
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with distributed.get_task_stream(client) as tasks:
            computed = client.compute(results, sync=True)
        workers = set(client.scheduler_info()["workers"])
    # every task ran in a worker process: per block, a state, an output, and merges
    assert len(tasks.data) >= 2 * 6 * 2 and {task["worker"] for task in tasks.data} <= workers
    references = [form(*arrays[:3], mask=arrays[3]) for form in forms]
    references += [form(*arrays[:3], mask=arrays[3], segment_ids=ids) for form in forms]
    for result, reference in zip(computed, references, strict=True):
        assert np.max(np.abs(result - reference)) <= TOLERANCE * np.max(np.abs(reference))
