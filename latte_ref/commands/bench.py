"""``latte-ref bench``: runs the benchmark script ``benchmarks/suite.py`` of a source checkout.

The benchmarks are plain scripts, not part of the installed core (they import torch or
jax for their references). This command finds the script and runs it in a new Python
process with the options given, so ``latte-ref bench --quick`` is
``python benchmarks/suite.py --quick``; ``latte-ref bench --help`` lists the options.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["HELP", "add_arguments", "find_suite", "main", "run"]

HELP = "time and peak memory of every form against T, with GEMM-floor and softmax-attention references (JSON + PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("options", nargs="*", help="the options of benchmarks/suite.py (latte-ref bench --help)")


def find_suite() -> Path:
    """``benchmarks/suite.py`` of the current directory, else of the source checkout this package runs from."""
    for candidate in (
        Path.cwd() / "benchmarks" / "suite.py",
        Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("benchmarks/suite.py not found: run latte-ref bench from a source checkout")


def main(argv: list[str]) -> int:
    """Run the suite with ``argv`` as its options; its exit status."""
    try:
        suite = find_suite()
    except FileNotFoundError as exc:
        print(f"latte-ref bench: {exc}", file=sys.stderr)
        return 2
    environment = {**os.environ, "LATTE_REF_BENCH_PROG": "latte-ref bench"}
    return subprocess.run([sys.executable, str(suite), *argv], env=environment, check=False).returncode


def run(args: argparse.Namespace) -> int:
    return main(list(args.options))
