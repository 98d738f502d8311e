"""``latte-ref validate MODULE:FUNCTION --form causal``: the conformance suite of :mod:`latte_ref.testing`.

Exit status: 0 when every case passes, 1 when the candidate disagrees on some case, 2 for a
usage error (a candidate name that does not resolve, an unknown backend, dtype or case),
reported in one line without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["HELP", "add_arguments", "run"]

HELP = "check another Latte implementation against the float64 reference (exit 0 when every case passes)"


def _logit_scale(text: str) -> float | str:
    if text == "inv_sqrt_l":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or inv_sqrt_l, got {text!r}") from None


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
    parser.add_argument(
        "--with-segments",
        action="store_true",
        help="it takes segment_ids= (runs the packed cases, which are otherwise reported as skipped)",
    )
    parser.add_argument(
        "--logit-scale",
        type=_logit_scale,
        default=None,
        metavar="S",
        help="it computes Latte(S*q, S*k): a number, or inv_sqrt_l for 1/sqrt(L) (default: 1)",
    )
    parser.add_argument(
        "--batch-axes",
        type=int,
        choices=(0, 1, 2),
        default=None,
        metavar="N",
        help="feed every case with exactly N batch axes, 0, 1 or 2 (default: each case's own)",
    )
    parser.add_argument(
        "--grad",
        action="store_true",
        help="also compare its gradients by q, k, v (of sum(y * w), w fixed) with the definition's in float64,"
        " and add the tied-key cases (torch or jax only)",
    )
    parser.add_argument("--seed", type=int, default=0, help="suite seed (default: 0)")
    parser.add_argument("--case", action="append", metavar="NAME", help="run only this case (repeatable)")
    parser.add_argument(
        "--save-dir",
        metavar="DIR",
        help="where a failing worst case's inputs go (default: $LATTE_REF_SAVE_DIR, else the temporary directory)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--traceback", action="store_true", help="print the full traceback of a candidate that raises")


def run(args: argparse.Namespace) -> int:
    from latte_ref.testing import UsageError, validate

    try:
        report = validate(
            args.candidate,
            form=args.form,
            backend=args.backend,
            device=args.device,
            dtype=args.dtype,
            layout=args.layout,
            with_mask=args.with_mask,
            with_state=args.with_state,
            with_segments=args.with_segments,
            seed=args.seed,
            cases=args.case,
            save_dir=args.save_dir,
            logit_scale=args.logit_scale,
            batch_axes=args.batch_axes,
            grad=args.grad,
        )
    except UsageError as exc:
        print(f"latte-ref validate: error: {exc}", file=sys.stderr)
        return 2
    print(report)
    if args.traceback and report.tracebacks():
        print(report.tracebacks())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0 if report.passed else 1
