"""The evaluator's command line (``python -m lis``), and the commands it lends ``lis-align``.

Each command lives in its own module under ``lis/commands`` with ``register(subparsers)``;
heavy imports happen inside the handler so ``--help`` stays instant.

The error contract (README, "What we guarantee"): bad input -- a :class:`lis.errors.DataError`,
an argparse error, a file the system refuses (``OSError`` naming it) -- is ONE line on stderr
and exit status 2. Any other exception is a bug in lis-align: one "internal error ... please
report" line and exit status 1. ``--debug`` (anywhere before a lone ``--``) adds the
traceback to either. Running out of memory (a ``MemoryError``, or Spark's JVM out of heap) is
not a bug: one line naming the setting that raises the limit, exit status 3. Ctrl-C is exit status 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from lis.errors import DataError, one_line

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_OUT_OF_MEMORY = 3

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


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``prog: error: MESSAGE (see --help)``.

    Subcommand parsers are made of the same class, so every level answers alike."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser(modules=LIS_COMMANDS, prog: str = "lis-align") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (for bug reports); also accepted after the command")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_commands(subparsers, modules)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv``, run the chosen handler, map every failure to one line and an exit status.

    Bad input (DataError, or an OSError about a named file) -> 2; out of memory -> 3 with the
    setting that raises it (:func:`out_of_memory`); interrupted -> 130; any other exception is a
    bug -> 1 with a "please report" line. ``--debug`` adds the traceback.
    """
    argv, debug = split_debug(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    debug = debug or args.debug
    try:
        result = args.handler(args)
    except DataError as error:
        return _fail(parser.prog, one_line(str(error)), EXIT_BAD_INPUT, debug)
    except KeyboardInterrupt:
        return _fail(parser.prog, "interrupted", EXIT_INTERRUPTED, debug)
    except OSError as error:
        if error.filename is None:  # no file to name: not something the user can fix by a flag
            return _internal(parser.prog, error, debug)
        return _fail(parser.prog, one_line(f"{error.filename}: {error.strerror or type(error).__name__}"),
                     EXIT_BAD_INPUT, debug)
    except Exception as error:  # a bug: short line, traceback only on request
        memory = out_of_memory(error)
        if memory:
            return _fail(parser.prog, memory, EXIT_OUT_OF_MEMORY, debug)
        return _internal(parser.prog, error, debug)
    return int(result or 0)


def out_of_memory(error: BaseException) -> str | None:
    """One line saying what ran out of memory and which setting raises it; None for anything else.

    Not a bug and not bad input: the same command succeeds with more memory. Spark's local mode
    runs its tasks in the driver's JVM, so a task's ``java.lang.OutOfMemoryError`` (which stops
    the SparkContext, and reaches Python as a cancelled job) is fixed by ``spark.driver.memory``."""
    if isinstance(error, MemoryError):
        return "out of memory in this process; free memory, or use the Spark engine (--engine spark) for large logs"
    text = str(error)
    if type(error).__name__ == "Py4JJavaError" and ("OutOfMemoryError" in text or "SparkContext was shut down" in text):
        return ("Spark stopped, most likely out of Java heap (java.lang.OutOfMemoryError in the log above); raise "
                "it with --spark-conf spark.driver.memory=8g (local mode) or spark.executor.memory=8g (a cluster)")
    return None


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (accepted anywhere before a lone ``--``) and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return kept, len(kept) != len(argv)


def _fail(prog: str, message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return status


def _internal(prog: str, error: BaseException, debug: bool) -> int:
    hint = "" if debug else "; rerun with --debug for the traceback"
    message = one_line(f"internal error ({type(error).__name__}: {error}); this is a bug in lis-align, "
                       f"please report it with the command line{hint}")
    return _fail(prog, message, EXIT_INTERNAL, debug)


def main(argv=None) -> int:
    return run(build_parser(prog="python -m lis"), argv)


if __name__ == "__main__":
    sys.exit(main())
