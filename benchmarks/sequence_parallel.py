"""Sequence-parallel causal Latte on a Dask cluster, from arrays on disk.

q, k and v of shape (1, T, H, L) in float32 are written once to ``--data`` as stacks of
``.npy`` files, one per block of ``--block-tokens`` tokens (T = 16,777,216 and H = 4,
L = D = 32 by default: 8 GiB each). For each worker count, a ``dask.distributed``
LocalCluster of that many single-threaded worker processes (``--memory-limit`` each, on
loopback) runs ``latte_ref.causal`` on the memory-mapped stacks and writes the output to
``--data``/y as a stack of the same blocks. Reported per run: the wall time of the
computation (reading, computing and writing; not the cluster's start), and each worker's
peak resident memory (``ru_maxrss``: the worker process from its start, imports included).

The output's first two blocks are checked against the NumPy core computed in this process
(the second block reads the state the cluster carried over from the first).

    python benchmarks/sequence_parallel.py --data latte-16m                  # 16M tokens
    python benchmarks/sequence_parallel.py --data latte-1m --tokens 1048576 --workers 1 2
"""

from __future__ import annotations

import os

# One BLAS thread per worker process: the workers are the parallelism.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402

import latte_ref  # noqa: E402


def write_inputs(data: Path, tokens: int, heads: int, latents: int, head_dim: int, block: int, seed: int) -> None:
    """q, k (1, T, H, L) and v (1, T, H, D) as float32 .npy stacks along T, unless they are there already."""
    rng = da.random.default_rng(seed)
    for name, width in (("q", latents), ("k", latents), ("v", head_dim)):
        shape = (1, tokens, heads, width)
        if (data / name / "info").exists():
            stored = da.from_npy_stack(str(data / name), mmap_mode="r")
            if stored.shape != shape or stored.chunks[1][0] != block:
                raise SystemExit(
                    f"{data / name} holds shape {stored.shape} in blocks of {stored.chunks[1][0]} tokens, not"
                    f" {shape} in blocks of {block}: use another --data folder"
                )
            continue
        x = rng.standard_normal(shape, chunks=(1, block, heads, width), dtype=np.float32)
        with dask.config.set(scheduler="threads"):
            da.to_npy_stack(str(data / name), x, axis=1)


def read_inputs(data: Path) -> tuple[da.Array, da.Array, da.Array]:
    """The three stacks as Dask arrays of memory-mapped blocks."""
    return tuple(da.from_npy_stack(str(data / name), mmap_mode="r") for name in ("q", "k", "v"))  # type: ignore[return-value]


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (``ru_maxrss`` is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_on_cluster(data: Path, workers: int, memory_limit: str, chunk_size: int | None) -> dict[str, Any]:
    """One causal pass over the on-disk inputs on a fresh LocalCluster of ``workers`` processes."""
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            host="127.0.0.1",
            dashboard_address=":0",  # any free port
        ) as cluster,
        Client(cluster) as client,
    ):
        q, k, v = read_inputs(data)
        y = latte_ref.causal(q, k, v, chunk_size=chunk_size)
        start = time.perf_counter()
        da.to_npy_stack(str(data / "y"), y, axis=1)
        seconds = time.perf_counter() - start
        peaks = client.run(_peak_rss_bytes)
    return {
        "workers": workers,
        "seconds": seconds,
        "tokens_per_second": q.shape[1] / seconds,
        "peak_rss_bytes_per_worker": sorted(peaks.values()),
        "blocks": q.numblocks[1],
    }


def check_first_blocks(data: Path) -> float:
    """Max |error| / max |y| of the stored output's first two blocks against the NumPy core."""
    q, k, v = (np.asarray(x.blocks[:, :2].compute(scheduler="sync")) for x in read_inputs(data))
    y = np.asarray(da.from_npy_stack(str(data / "y"), mmap_mode="r").blocks[:, :2].compute(scheduler="sync"))
    reference = latte_ref.causal(q, k, v)
    return float(np.max(np.abs(y - reference)) / np.max(np.abs(reference)))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder for the input and output stacks")
    parser.add_argument("--tokens", type=int, default=16_777_216)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--latents", type=int, default=32, help="L per head")
    parser.add_argument("--head-dim", type=int, default=32, help="D per head")
    parser.add_argument("--block-tokens", type=int, default=262_144, help="tokens per Dask block (on disk too)")
    parser.add_argument("--chunk-size", type=int, default=None, help="latte_ref.causal's chunk size in a block")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-limit", default="2GiB", help="per worker; Dask pauses, spills and restarts past it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    args.data.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_inputs(args.data, args.tokens, args.heads, args.latents, args.head_dim, args.block_tokens, args.seed)
    result: dict[str, Any] = {
        "shape": {"B": 1, "T": args.tokens, "H": args.heads, "L": args.latents, "D": args.head_dim},
        "dtype": "float32",
        "block_tokens": args.block_tokens,
        "memory_limit": args.memory_limit,
        "input_bytes": sum(x.nbytes for x in read_inputs(args.data)),
        "write_inputs_seconds": time.perf_counter() - start,
        "machine": {"logical_cores": os.cpu_count(), "python": platform.python_version()},
        "runs": [],
    }
    for workers in args.workers:
        run = run_on_cluster(args.data, workers, args.memory_limit, args.chunk_size)
        result["runs"].append(run)
        peaks = ", ".join(f"{b / 2**30:.2f}" for b in run["peak_rss_bytes_per_worker"])
        print(f"{workers} worker(s): {run['seconds']:.1f} s, peak RSS per worker {peaks} GiB", flush=True)
    result["first_blocks_relative_error"] = check_first_blocks(args.data)
    times = {run["workers"]: run["seconds"] for run in result["runs"]}
    if 1 in times and 2 in times:
        result["speedup_2_over_1"] = times[1] / times[2]
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
