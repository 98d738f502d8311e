"""The ``latte-ref`` command line: one subcommand per module of :mod:`latte_ref.commands`.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status). They are imported only when chosen.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["COMMANDS", "PASS_THROUGH", "main"]

COMMANDS: dict[str, str] = {
    "bench": "latte_ref.commands.bench",
    "check": "latte_ref.commands.check",
    "explain": "latte_ref.commands.explain",
    "validate": "latte_ref.commands.validate",
}
"""Subcommand name -> module."""


PASS_THROUGH = {"bench"}
"""Subcommands whose options belong to a script they run: they get the rest of the line as it is."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        return int(importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]))
    parser = argparse.ArgumentParser(prog="latte-ref", description="Latte reference implementation: checks and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
