"""``latte-ref explain``: the arguments of the worked example of :mod:`latte_ref.explain`."""

from __future__ import annotations

import argparse

from ..explain import DEFAULT_PLOT, format_example, plot_example, worked_example

__all__ = ["HELP", "add_arguments", "run"]

HELP = "print Latte's probabilities on a six-token example (--plot [PATH] draws the attention matrices)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--latents", type=int, default=3, metavar="L", help="latents (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    parser.add_argument(
        "--plot",
        nargs="?",
        const=DEFAULT_PLOT,
        default=None,
        metavar="PATH",
        help=f"also write the attention heatmaps as a PNG (needs matplotlib; default PATH: {DEFAULT_PLOT})",
    )


def run(args: argparse.Namespace) -> int:
    ex = worked_example(n_latents=args.latents, seed=args.seed)
    print(format_example(ex))
    if args.plot:
        plot_example(ex, args.plot)
        print(f"\nwrote {args.plot}")
    return 0
