"""The training data of a recipe: the data dir checked, the windows split, fit-window pairs as catalogue rows.

:func:`prepare_data` needs no model: it loads and validates the data dir (images included),
splits the log into fit and evaluation windows (:mod:`lis.windows`), builds the training pairs
from the fit window only (or loads a pairs file), and holds a few out for ``eval_loss``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lis.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Everything :func:`prepare_data` derives from the data dir (no model needed)."""

    datadir: object  # lis.datadir.DataDir
    windows: object  # lis.windows.Windows
    pairs: pd.DataFrame  # anchor_id, positive_id, weight (all fit-window pairs)
    source: str  # builder name or pairs file
    trained_until: int  # last timestamp of the fit window
    train_rows: np.ndarray = field(default=None)  # indices into pairs
    eval_rows: np.ndarray = field(default=None)
    eval_is_holdout: bool = True
    # The builder and options that made ``pairs`` (None for a pairs file): exported tables record
    # them in their manifest, so the evaluator bounds a table by the ceiling of its own pairs.
    builder: str | None = None
    builder_options: dict | None = None


def prepare_data(recipe) -> TrainingData:
    """Load and check the data dir, split windows, build (or load) the fit-window pairs, hold some out.

    Raises DataError for a missing/corrupt image (naming the catalogue file, row and item), a
    pair naming an item not in the catalogue (naming the pairs file and the pair), and zero
    pairs (naming the builder or file and the fit window).
    """
    from lis.builders import build_pairs, builder_options
    from lis.datadir import load_datadir
    from lis.schemas import load_pairs, validate_pairs
    from lis.windows import split_windows

    d = recipe.data
    datadir = load_datadir(d.data_dir, check_images=True)
    windows = split_windows(datadir.log, eval_fraction=d.eval_fraction, name=f"{d.data_dir}/log")
    fit = windows.slice(datadir.log, "fit")
    item_ids = datadir.catalogue["item_id"]
    if d.pairs_file:
        # load_pairs names the file, the column and the first pair whose item is unknown.
        pairs = load_pairs(d.pairs_file, item_ids=item_ids)
        source = str(d.pairs_file)
        logger.warning("pairs file %s: trusted to hold only fit-window behaviour (before %s)", source,
                       windows.to_dict()["eval_start"])
    else:
        options = {"top_k": d.top_k} if "top_k" in builder_options(d.builder) else {}
        options.update(d.builder_options)
        pairs = build_pairs(d.builder, fit, datadir.catalogue, seed=recipe.training.seed, **options)
        source = d.builder
        if len(pairs) == 0:
            raise DataError(f"{d.data_dir}: builder '{d.builder}' built no pairs from the fit window "
                            f"({len(fit)} impressions before {windows.to_dict()['eval_start']}); "
                            "try another data.builder or a longer log.")
        pairs = validate_pairs(pairs, name=f"pairs of builder '{d.builder}'", item_ids=item_ids)
    data = TrainingData(datadir, windows, pairs.reset_index(drop=True), source, int(fit["timestamp"].max()),
                        builder=None if d.pairs_file else d.builder,
                        builder_options=None if d.pairs_file else dict(options))
    _hold_out(data, recipe)
    return data


def _hold_out(data: TrainingData, recipe) -> None:
    """A few % of the pairs for ``eval_loss``; tiny pair sets evaluate on training pairs instead."""
    n = len(data.pairs)
    rng = np.random.default_rng(recipe.training.seed)
    order = rng.permutation(n)
    k = min(recipe.data.max_holdout_pairs, int(n * recipe.data.holdout_fraction))
    if k == 0:  # holdout_fraction < 1 is validated, so k < n always
        data.train_rows, data.eval_rows, data.eval_is_holdout = np.arange(n), order[: min(n, recipe.data.max_holdout_pairs)], False
        logger.warning("%d pairs with data.holdout_fraction=%s hold none out; eval_loss is measured on training pairs",
                       n, recipe.data.holdout_fraction)
        return
    data.train_rows, data.eval_rows = np.sort(order[k:]), np.sort(order[:k])


def pair_rows(data: TrainingData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(anchor rows, positive rows, weights)`` of every pair: rows of the catalogue, in pair order."""
    row_of = {item: row for row, item in enumerate(data.datadir.catalogue["item_id"])}
    anchors = data.pairs["anchor_id"].map(row_of).to_numpy()
    positives = data.pairs["positive_id"].map(row_of).to_numpy()
    return anchors, positives, data.pairs["weight"].to_numpy(dtype=np.float32)


def negative_rows(data: TrainingData, k: int, seed: int = 0) -> np.ndarray | None:
    """``(n_pairs, k)`` catalogue rows of each pair's impression hard negatives (-1 = none), or None for k = 0.

    A pairs file's ``hard_negative_ids`` column is used as given (cut to ``k``; ids not in the
    catalogue are a DataError); otherwise they are mined from the fit window
    (:func:`lis.hard_negatives.mine_hard_negatives`) and kept in ``data.pairs``.
    """
    from lis.hard_negatives import HARD_NEGATIVES_COLUMN, mine_hard_negatives

    if not k:
        return None
    pairs = data.pairs
    if HARD_NEGATIVES_COLUMN not in pairs.columns:
        fit = data.windows.slice(data.datadir.log, "fit")
        pairs[HARD_NEGATIVES_COLUMN] = mine_hard_negatives(fit, pairs, k, seed=seed)
    row_of = {item: row for row, item in enumerate(data.datadir.catalogue["item_id"])}
    rows = np.full((len(pairs), k), -1, dtype=np.int64)
    for i, negatives in enumerate(pairs[HARD_NEGATIVES_COLUMN]):
        negatives = [] if negatives is None else list(negatives)[:k]
        for j, item in enumerate(negatives):
            if str(item) not in row_of:
                raise DataError(f"{data.source}: column '{HARD_NEGATIVES_COLUMN}' of pair {i} names item {item!r}, "
                                "which is not in the catalogue.")
            rows[i, j] = row_of[str(item)]
    found = int((rows >= 0).any(axis=1).sum())
    logger.info("hard negatives: %d of %d pairs have some (up to %d each, %.1f on average)", found, len(pairs), k,
                float((rows >= 0).sum(axis=1).mean()))
    return rows
