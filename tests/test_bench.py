"""Smoke test of ``latte-ref bench``: the suite runs end to end at tiny sizes and writes what it promises.

No timing is asserted here; speed is judged only from the ratios a full run records. The
command runs ``benchmarks/suite.py`` as a script in a new process, so its output is read
from the file descriptors (``capfd``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from latte_ref import cli


def test_bench_writes_results_targets_and_plots(tmp_path, capfd):
    status = cli.main(
        [
            "bench",
            "--quick",
            "--backends",
            "numpy",
            "--max-tokens",
            "1024",
            "--max-tokens-other",
            "1024",
            "--repeats",
            "1",
            "--output",
            str(tmp_path),
        ]
    )
    assert status == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["machine"]["logical_cores"] >= 1
    kinds = {row["kind"] for row in result["rows"]}
    assert {"floor", "form", "softmax", "step"} <= kinds
    forms = {row["form"] for row in result["rows"] if row["kind"] == "form"}
    assert forms == {"bidirectional", "causal", "recurrent"}
    assert all(row["seconds"] > 0 for row in result["rows"] if "seconds" in row)
    memory = [row for row in result["rows"] if "peak_bytes_excluding_inputs" in row]
    assert memory and all(row["peak_bytes_including_inputs"] > row["peak_bytes_excluding_inputs"] for row in memory)
    measured = {t["target"]: t["measured"] for t in result["targets"]}
    assert measured["causal / GEMM floor"] is not None
    assert "causal / GEMM floor" in capfd.readouterr().out
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "time_numpy.png").stat().st_size > 0
        assert (tmp_path / "step.png").stat().st_size > 0


def test_bench_passes_its_options_to_the_script(capfd):
    assert cli.main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: latte-ref bench" in out and "--quick" in out
    assert cli.main(["bench", "--no-such-option"]) == 2


def _benchmarks_module(name):
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_a_busy_machine_or_a_form_below_its_floor_gets_no_met_verdict():
    timing, targets = _benchmarks_module("timing"), _benchmarks_module("targets")
    assert timing.busy(0.2, 2.5, cores=2) is None  # after the run, its own load (up to 1 per core) is allowed
    assert timing.busy(1.2, 2.5, cores=2).startswith("unreliable: machine busy")
    assert timing.busy(0.2, 3.2, cores=2).startswith("unreliable: machine busy")
    # During the run: the machine's CPU seconds less the run's own, per second of wall time.
    assert timing.others_cores((100.0, 10.0), (130.0, 30.0), wall_seconds=10.0) == 1.0
    assert timing.others_cores((100.0, 10.0), (119.0, 30.0), wall_seconds=10.0) == 0.0  # counters' rounding
    assert timing.busy_by_others(0.9, cores=2) is None
    assert timing.busy_by_others(1.1, cores=2).startswith("unreliable: machine busy (other processes used 1.10")

    class Config:
        target_tokens, scaling_tokens, packed_documents, step_contexts = 1024, (1024, 2048), 4, (1024, 8192)

    floor = {"kind": "floor", "backend": "numpy", "T": 1024, "seconds": 1.0}
    causal = {"kind": "form", "backend": "numpy", "form": "causal", "T": 1024, "seconds": 2.0}
    bidirectional = {**causal, "form": "bidirectional", "seconds": 0.5, "below_floor": True}
    verdicts = {t["target"]: t for t in targets.summarise_targets([floor, causal, bidirectional], Config())}
    assert verdicts["causal / GEMM floor"]["verdict"] == "met" and verdicts["causal / GEMM floor"]["met"] is True
    below = verdicts["bidirectional / GEMM floor"]
    assert below["verdict"].startswith("unreliable: a form measured faster") and below["met"] is None
    assert verdicts["numpy: causal / bidirectional"]["verdict"].startswith("unreliable")
    busy = targets.summarise_targets([floor, causal], Config(), busy="unreliable: machine busy (load 3)")
    assert {t["verdict"] for t in busy if t["measured"] is not None} == {"unreliable: machine busy (load 3)"}
    # causal / floor = 5.9 against a bound of 6: within 10%, neither met nor NOT met
    close = targets.summarise_targets([floor, {**causal, "seconds": 5.9}], Config())
    close_call = {t["target"]: t for t in close}["causal / GEMM floor"]
    assert close_call["verdict"].startswith("too close to call") and close_call["met"] is None


def test_interleaved_timing_takes_the_minimum_of_every_round():
    from latte_ref import backends

    timing = _benchmarks_module("timing")
    calls = []
    numpy = backends.get_backend("numpy")
    times = timing.interleaved_times(
        {"a": (numpy, lambda: calls.append("a")), "b": (numpy, lambda: calls.append("b"))}, repeats=5, calls=1
    )
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] * 2 + ["a", "b"]  # a warm-up each, then rotating rounds
    assert set(times) == {"a", "b"} and all(0 < t < 1 for t in times.values())
    # calls=3: each round times three calls in a row
    calls.clear()
    timing.interleaved_times({"a": (numpy, lambda: calls.append("a"))}, repeats=2, calls=3)
    assert calls == ["a"] * (1 + 2 * 3)


def test_rounds_go_on_until_they_span_the_spread():
    import time

    from latte_ref import backends

    timing = _benchmarks_module("timing")
    calls: list[float] = []
    numpy = backends.get_backend("numpy")
    started = time.perf_counter()
    timing.interleaved_times({"a": (numpy, lambda: calls.append(time.perf_counter()))}, repeats=2, spread=0.05)
    assert time.perf_counter() - started >= 0.05 and len(calls) > 3  # more rounds than repeats, over the spread
    calls.clear()
    timing.interleaved_times({"a": (numpy, lambda: calls.append(0.0))}, repeats=2)
    assert len(calls) == 1 + 2  # no spread: the warm-up and the repeats


def test_cpu_counters_see_this_process_work():
    timing = _benchmarks_module("timing")
    before = timing.cpu_counters()
    if before is None:
        pytest.skip("no /proc/stat on this system")
    total = sum(i * i for i in range(3_000_000))  # about a CPU-second's tenth of pure Python
    after = timing.cpu_counters()
    assert total > 0 and after[1] > before[1] and after[0] >= before[0]


def test_a_measurement_in_several_passes_keeps_each_functions_fastest_pass(tmp_path, monkeypatch):
    timing, points, suite = (_benchmarks_module(name) for name in ("timing", "points", "suite"))
    floor = {"kind": "floor", "backend": "numpy", "T": 8, "seconds": 1.0}
    causal = {"kind": "form", "backend": "numpy", "form": "causal", "T": 8, "seconds": 3.0, "peak_bytes": 7}
    peer = {"kind": "peer", "numpy_causal_layer_seconds": 2.0, "jax_scan_seconds": 4.0, "ours_compile_seconds": 9.0}
    later = [
        {**floor, "seconds": 2.0},
        {**causal, "seconds": 0.5, "peak_bytes": 8},
        {**peer, "numpy_causal_layer_seconds": 3.0, "jax_scan_seconds": 1.0, "ours_compile_seconds": 0.1},
    ]
    merged = timing.fastest_rows([floor, causal, peer], later)
    assert [r.get("seconds") for r in merged] == [1.0, 0.5, None]
    assert merged[1]["peak_bytes"] == 7  # what is not a time stays the first pass's
    assert (merged[2]["numpy_causal_layer_seconds"], merged[2]["jax_scan_seconds"]) == (2.0, 1.0)
    assert merged[2]["ours_compile_seconds"] == 9.0  # a compile is paid once: not a time to minimise
    assert timing.fastest_rows([floor], [causal]) == [floor]  # rows that do not pair up: the first pass's
    # Each kept its fastest pass, and causal's (0.5) is now below the floor's (1.0): marked, and unmarked again.
    marked = points.mark_below_floor(merged)
    assert marked[1]["below_floor"] is True and "below_floor" not in marked[0]
    assert "below_floor" not in points.mark_below_floor([floor, {**marked[1], "seconds": 1.5}])[1]

    # The run takes a task with three passes three times, after the whole plan, and keeps each time's minimum.
    seconds = iter([3.0, 1.0, 2.0])
    order: list[str] = []

    def measured() -> list[dict]:
        order.append("passes")
        return [{"kind": "step", "backend": "numpy", "method": "m", "context": 1, "seconds": next(seconds)}]

    def once() -> list[dict]:
        order.append("once")
        return []

    def measured_again() -> list[dict]:
        order.append("again")
        return measured()

    tasks = [suite.Task("three passes", measured, again=measured_again, passes=3), suite.Task("one pass", once)]
    monkeypatch.setattr(suite, "plan", lambda config: iter(tasks))
    monkeypatch.setattr(suite, "steady_allocator", lambda: None)  # this worker's malloc stays as it is
    result = suite.run(suite.Config.quick_config(["numpy"]), tmp_path)
    assert order == ["passes", "once", "again", "passes", "again", "passes"]  # later passes run `again`
    assert [r["seconds"] for r in result["rows"]] == [1.0]


def test_a_quick_run_takes_what_the_targets_compare_in_three_passes_and_jax_only_jitted() -> None:
    suite = _benchmarks_module("suite")
    names = ["numpy", "torch", "jax"]
    quick = {task.label: task.passes for task in suite.plan(suite.Config.quick_config(names))}
    assert quick["numpy floor, forms, packed, softmax T=2048"] == 3  # the targets' T
    assert quick["numpy floor, forms, softmax T=1024"] == 3  # the scaling targets' small T
    assert quick["numpy step contexts=1024,8192"] == 3 and quick["torch step contexts=1024,8192"] == 1
    assert quick["jax jit causal, bidirectional T=2048"] == 3 and quick["decode step against SDPA"] == 3
    assert quick["numpy recurrent T=1024"] == 1 and quick["numpy causal chunk_size=16,32,64"] == 1
    assert not any(label.startswith(("jax floor", "jax step", "jax state")) for label in quick)  # no eager JAX
    full = suite.Config(backends=names)
    full.shrink_to(2048)
    passes = {task.label: task.passes for task in suite.plan(full)}
    assert passes["numpy floor, forms, packed, softmax T=2048"] == 1  # a full run's calls are long: one pass
    assert passes["jax jit causal, bidirectional T=2048"] == 3 and "jax floor, forms, softmax T=1024" in passes


def test_the_allocator_is_fixed_on_glibc_and_left_alone_elsewhere() -> None:
    import platform
    import subprocess
    import sys

    timing = _benchmarks_module("timing")
    # In a process of its own: the settings last for the process, and would change this worker's memory.
    folder = str(Path(timing.__file__).parent)
    code = f"import sys; sys.path.insert(0, {folder!r}); import timing; print(timing.steady_allocator())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    on_glibc = platform.libc_ver()[0] == "glibc"
    assert done.stdout.strip() == ("glibc: mmap threshold 32 MiB, trim threshold 256 MiB" if on_glibc else "None")
