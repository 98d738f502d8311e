"""``latte-ref validate MODULE:FUNCTION --form causal``: the conformance suite of :mod:`latte_ref.testing`."""

from __future__ import annotations

import argparse
import json

HELP = "check another Latte implementation against the float64 reference (exit 0 when every case passes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidate", metavar="MODULE:FUNCTION", help="the implementation, e.g. mykernels.latte:causal")
    parser.add_argument("--form", required=True, choices=("bidirectional", "causal", "step"), help="its contract")
    parser.add_argument("--backend", default="numpy", help="latte-ref backend of its inputs (default: numpy)")
    parser.add_argument("--device", default=None, help="device name, e.g. cuda (default: the backend's first)")
    parser.add_argument("--dtype", default="float32", help="dtype of its inputs (default: float32)")
    parser.add_argument(
        "--layout", choices=("BTHD", "BHTD"), default="BTHD", help="BHTD for head-first implementations"
    )
    parser.add_argument("--with-mask", action="store_true", help="it takes mask= (adds padding cases)")
    parser.add_argument(
        "--with-state", action="store_true", help="it takes state= and return_state= (adds cut-point cases)"
    )
    parser.add_argument("--seed", type=int, default=0, help="suite seed (default: 0)")
    parser.add_argument("--case", action="append", metavar="NAME", help="run only this case (repeatable)")
    parser.add_argument(
        "--save-dir", metavar="DIR", help="where the worst case's inputs go (default: the temporary directory)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    from latte_ref.testing import validate

    report = validate(
        args.candidate,
        form=args.form,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        layout=args.layout,
        with_mask=args.with_mask,
        with_state=args.with_state,
        seed=args.seed,
        cases=args.case,
        save_dir=args.save_dir,
    )
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0 if report.passed else 1
