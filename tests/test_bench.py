"""Smoke test of ``latte-ref bench``: the suite runs end to end at tiny sizes and writes what it promises.

No timing is asserted here; speed is judged only from the ratios a full run records. The
command runs ``benchmarks/suite.py`` as a script in a new process, so its output is read
from the file descriptors (``capfd``).
"""

from __future__ import annotations

import importlib.util
import json

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
