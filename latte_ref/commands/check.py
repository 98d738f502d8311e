"""``latte-ref check``: every form on every installed backend, device and dtype against the float64 definition."""

from __future__ import annotations

import argparse

HELP = "run every form on every installed backend, device and dtype against the float64 NumPy definition"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
