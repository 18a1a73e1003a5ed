"""The evaluator's command line (``python -m lis``), and the commands it lends ``lis-align``.

Each command lives in its own module under ``lis/commands`` with ``register(subparsers)``;
heavy imports happen inside the handler so ``--help`` stays instant. Bad input raises
:class:`lis.errors.DataError`, which becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lis.errors import DataError

LIS_COMMANDS = (
    "lis.commands.synth",
    "lis.commands.data",
    "lis.commands.pairs",
    "lis.commands.score",
)

DESCRIPTION = (
    "lis-align: align vision-language models with recommender systems, scored by the "
    "Leakage Impact Score (LIS, arXiv 2508.04963)."
)


def add_commands(subparsers, modules=LIS_COMMANDS) -> None:
    for name in modules:
        importlib.import_module(name).register(subparsers)


def build_parser(modules=LIS_COMMANDS, prog: str = "lis-align") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_commands(subparsers, modules)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv``, run the chosen handler, map bad input to exit status 2."""
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except DataError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def main(argv=None) -> int:
    return run(build_parser(prog="python -m lis"), argv)


if __name__ == "__main__":
    sys.exit(main())
