"""The ``lis-align`` console script: the evaluator's commands plus training's.

Evaluator commands come from :mod:`lis.cli`; the ones below need transformers/peft, which
each handler imports lazily.
"""
from __future__ import annotations

import sys

from lis.cli import LIS_COMMANDS, build_parser, run

ALIGN_COMMANDS = (
    "align.commands.model",
    "align.commands.train",
    "align.commands.export",
    "align.commands.demo",
    "align.commands.publish",
)


def main(argv=None) -> int:
    return run(build_parser(LIS_COMMANDS + ALIGN_COMMANDS), argv)


if __name__ == "__main__":
    sys.exit(main())
