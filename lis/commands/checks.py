"""Boundary checks of command-line arguments: each failure names the flag and the bad value.

Commands call these before any work, so a wrong number or an ``--out`` that would overwrite
an input costs nothing and writes nothing (README, "What we guarantee").
"""
from __future__ import annotations

import math
from pathlib import Path

from lis.errors import ConfigError

REPORT_SIBLINGS = (".md", ".png")  # lis score writes OUT plus OUT with these suffixes


def positive_int(value, flag: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag}: must be a positive integer; got {value}.")


def fraction(value, flag: str) -> None:
    """A share strictly between 0 and 1."""
    if value is not None and not 0.0 < value < 1.0:
        raise ConfigError(f"{flag}: must be in (0, 1); got {value}.")


def finite(value, flag: str) -> None:
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"{flag}: must be a finite number; got {value}.")


def report_paths(out) -> list[Path]:
    """The three files ``lis score --out OUT`` writes: OUT, OUT.md, OUT.png (suffix replaced)."""
    out = Path(out)
    if out.suffix.lower() in REPORT_SIBLINGS:
        raise ConfigError(f"--out: {out} ends in {out.suffix}; the report's JSON needs another name "
                          f"(the .md and .png are written beside it), e.g. {out.with_suffix('.json')}.")
    return [out] + [out.with_suffix(suffix) for suffix in REPORT_SIBLINGS]


def check_score_args(args, table_paths: list, pairs_paths: list) -> None:
    """``lis score``'s numbers in range and its three outputs neither folders nor inputs."""
    from lis.datadir import datadir_inputs
    from lis.paths import check_output_file

    positive_int(args.bootstrap, "--bootstrap")
    positive_int(args.history_len, "--history-len")
    positive_int(args.oracle_steps, "--oracle-steps")
    positive_int(args.workers, "--workers")
    positive_int(args.oracle_dim, "--oracle-dim")
    inputs = [*datadir_inputs(args.data), *table_paths, *pairs_paths]
    for path in report_paths(args.out):
        check_output_file(path, "--out", inputs)


def table_paths(items: list[str]) -> list[str]:
    """The files of ``--embeddings NAME=FILE`` (or ``FILE``) arguments."""
    paths = [item.partition("=")[2].strip() if "=" in item else item.strip() for item in items]
    return [path for path in paths if path]  # an empty one is refused by load_tables, by name
