"""Time windows of an impression log: the past (*fit*) and the "future" (*eval*).

The evaluator trains the ranker and builds training pairs on the fit window and measures
gains on the evaluation window, which is split again by time into *probe-fit* (the probe is
fitted there) and *probe-test* (it is scored there)::

    fit        : t <  eval_start
    eval       : t >= eval_start
    probe_fit  : eval_start <= t < probe_split
    probe_test : t >= probe_split

The cuts are chosen by impression quantile, not by wall-clock time: the last
``eval_fraction`` of the impressions form the evaluation window, and its two halves hold
about the same number of impressions. All impressions sharing a timestamp fall on the same
side of a cut (a cut is a timestamp), so the fractions are approximate on logs with many ties.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from lis.errors import DataError

WINDOW_NAMES = ("fit", "eval", "probe_fit", "probe_test")


def iso_time(seconds: int) -> str:
    """Unix seconds as an ISO-8601 UTC string (``2024-01-31T12:00:00Z``)."""
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Windows:
    """Cut timestamps of the four windows, plus what each held when the cuts were chosen.

    ``start``/``end`` are the first and last timestamps of the log (inclusive);
    ``eval_start`` and ``probe_split`` are the cuts (the first second of the evaluation
    window and of probe-test). ``counts`` maps each window name to ``(rows, positives)``.
    """

    start: int
    eval_start: int
    probe_split: int
    end: int
    eval_fraction: float = 0.3
    counts: dict = field(default_factory=dict, compare=False)

    @property
    def fit_end(self) -> int:
        """Exclusive end of the fit window (= ``eval_start``); nothing trained on the fit
        window has seen a timestamp >= this."""
        return self.eval_start

    def bounds(self, name: str) -> tuple[int | None, int | None]:
        """``(lo, hi)`` of a window: ``lo <= t < hi``; ``None`` means unbounded."""
        _check_name(name)
        return {
            "fit": (None, self.eval_start),
            "eval": (self.eval_start, None),
            "probe_fit": (self.eval_start, self.probe_split),
            "probe_test": (self.probe_split, None),
        }[name]

    def mask(self, log: pd.DataFrame, name: str) -> np.ndarray:
        """Boolean array over the rows of ``log``: True where the row lies in window ``name``."""
        lo, hi = self.bounds(name)
        t = log["timestamp"].to_numpy()
        keep = np.ones(len(t), dtype=bool)
        if lo is not None:
            keep &= t >= lo
        if hi is not None:
            keep &= t < hi
        return keep

    def slice(self, log: pd.DataFrame, name: str) -> pd.DataFrame:
        """The rows of ``log`` in window ``name`` (a copy with a fresh index)."""
        return log.loc[self.mask(log, name)].reset_index(drop=True)

    def to_dict(self) -> dict:
        """Plain-JSON summary for ``report.json``: cuts as ISO times and unix seconds, and
        per window its time range, rows and positives."""
        out = {
            "eval_fraction": self.eval_fraction,
            "eval_start": iso_time(self.eval_start),
            "probe_split": iso_time(self.probe_split),
            "eval_start_unix": int(self.eval_start),
            "probe_split_unix": int(self.probe_split),
        }
        for name in WINDOW_NAMES:
            lo, hi = self.bounds(name)
            rows, positives = self.counts.get(name, (None, None))
            out[name] = {
                "from": iso_time(self.start if lo is None else lo),
                # The last second inside the window (hi is exclusive).
                "to": iso_time(self.end if hi is None else hi - 1),
                "rows": rows,
                "positives": positives,
            }
        return out


def split_windows(log: pd.DataFrame, eval_fraction: float = 0.3, name: str = "log") -> Windows:
    """Choose the cuts so that the last ``eval_fraction`` of impressions form the evaluation
    window, halved by time into probe-fit and probe-test.

    ``name`` is the file name used in error messages. Raises :class:`DataError` when a
    window is empty or holds one class only (the probe needs both labels everywhere), and
    :class:`lis.errors.ConfigError` for an ``eval_fraction`` outside (0, 1).
    """
    from lis.errors import ConfigError

    if not (isinstance(eval_fraction, (int, float)) and 0.0 < float(eval_fraction) < 1.0):
        raise ConfigError(f"eval_fraction must lie strictly between 0 and 1; got {eval_fraction!r}.")
    for column in ("timestamp", "label"):
        if column not in log.columns:
            raise DataError(f"{name}: column '{column}' is missing; windows need timestamps and labels.")
    t = np.sort(log["timestamp"].to_numpy(dtype=np.int64), kind="stable")
    n = len(t)
    if n < 4:
        raise DataError(f"{name}: {n} impressions are too few to split into fit and evaluation windows.")
    # First row of the evaluation window and first row of its second half, by position in time.
    eval_row = min(n - 1, int(np.floor(n * (1.0 - float(eval_fraction)))))
    probe_row = min(n - 1, eval_row + (n - eval_row) // 2)
    windows = Windows(
        start=int(t[0]),
        eval_start=int(t[eval_row]),
        probe_split=int(t[probe_row]),
        end=int(t[-1]),
        eval_fraction=float(eval_fraction),
    )
    counts = {}
    labels = log["label"].to_numpy()
    for window in WINDOW_NAMES:
        keep = windows.mask(log, window)
        counts[window] = (int(keep.sum()), int(labels[keep].sum()))
    object.__setattr__(windows, "counts", counts)
    _check_counts(windows, name)
    return windows


def _check_counts(windows: Windows, name: str) -> None:
    for window in WINDOW_NAMES:
        rows, positives = windows.counts[window]
        lo, hi = windows.bounds(window)
        span = f"{iso_time(windows.start if lo is None else lo)} .. " + (
            "end" if hi is None else f"before {iso_time(hi)}"
        )
        if rows == 0:
            raise DataError(
                f"{name}: window '{window}' ({span}) holds no impressions; the log is too short or "
                f"too many impressions share one timestamp (eval_fraction {windows.eval_fraction})."
            )
        if positives == 0 or positives == rows:
            kind = "engaged" if positives == rows else "non-engaged"
            raise DataError(
                f"{name}: window '{window}' ({span}) has {rows} impressions and {positives} positives; "
                f"it needs both labels but holds only {kind} ones."
            )


def _check_name(name: str) -> None:
    if name not in WINDOW_NAMES:
        raise ValueError(f"unknown window {name!r}; expected one of {', '.join(WINDOW_NAMES)}")
