"""The base ranker: a built-in ID-based CTR model, or the user's own production scores.

The probe adds similarity features on top of ``base_logit``; this module supplies that
logit. Two sources:

- ``builtin``: :class:`IdCtrRanker`, a matrix-factorisation CTR model trained on the fit
  window (``logit = b + b_user + b_item + <p_user, q_item>``). Its item table ``q`` is also
  the source of the ``ranker_knn`` preference builder.
- ``column``: the log's own ``base_logit`` column, passed through unchanged.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import torch

from lis.errors import ConfigError, DataError, describe_value
from lis.threads import one_torch_thread


class _MF(torch.nn.Module):
    """logit = b + b_user + b_item + <p_user, q_item> (+ w . dense, when dense columns are given)."""

    def __init__(self, n_users: int, n_items: int, dim: int, generator: torch.Generator, n_dense: int = 0):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))
        # Linear term over standardised dense columns (full mode); zero-initialised so the
        # ID part and the dense part start from the same place for every table.
        self.dense_weight = torch.nn.Parameter(torch.zeros(n_dense))
        self.user_bias = torch.nn.Parameter(torch.zeros(n_users))
        self.item_bias = torch.nn.Parameter(torch.zeros(n_items))
        # Small init: the dot term starts near 0 so the biases learn the base rates first.
        self.user_vec = torch.nn.Parameter(torch.randn(n_users, dim, generator=generator) * 0.01)
        self.item_vec = torch.nn.Parameter(torch.randn(n_items, dim, generator=generator) * 0.01)

    def forward(self, users: torch.Tensor, items: torch.Tensor, dense: torch.Tensor | None = None):
        p = self.user_vec[users]
        q = self.item_vec[items]
        logit = self.bias + self.user_bias[users] + self.item_bias[items] + (p * q).sum(-1)
        if dense is not None:
            logit = logit + dense @ self.dense_weight
        # L2 on the rows this batch touches (frequency-aware regularisation, as usual for MF).
        penalty = (p * p).sum(-1).mean() + (q * q).sum(-1).mean()
        return logit, penalty


class IdCtrRanker:
    """A built-in ID-based CTR model (biases + matrix factorisation) trained with Adam/BCE.

    Use :meth:`fit` to train on the fit window; the held-out tail (the last
    ``valid_fraction`` of the rows by time) drives early stopping, then the model is
    retrained on all rows for the best number of epochs (``refit=True``), so items seen
    only in the tail are still learned. Training is seeded and deterministic on CPU for a
    given machine and thread count.

    Cold start: users or items unseen in training get bias 0 and a zero vector, so their
    logit is the global bias plus whatever side is known.

    Dense inputs (the evaluator's full mode): ``fit(..., dense=X)`` adds a linear term
    ``w . standardise(X)`` trained jointly with the factors (no L2 on ``w``: it has a handful
    of columns and a full fit window of rows); ``predict_logits(rows, dense=X)`` then needs
    the same columns. Columns are standardised with the training rows' mean and standard
    deviation (a constant column gets scale 1, so a zero slope).

    Limits: no history/sequence term and no side features (text, category) beyond the dense
    columns; it is a deliberately simple, robust baseline. Users with their own production
    ranker should pass its scores as a ``base_logit`` column instead.
    """

    def __init__(self, user_index: pd.Index, item_index: pd.Index, model: _MF, item_counts: np.ndarray,
                 trained_until: int | None, history: list[dict], dense_scaling: tuple | None = None):
        self.user_index = user_index
        self.item_index = item_index
        self.item_counts = item_counts
        self.trained_until = trained_until
        self.history = history  # per-epoch {"epoch", "train_loss", "valid_loss"} of the selection run
        with torch.no_grad():
            self._bias = float(model.bias.item())
            self._user_bias = model.user_bias.detach().double().numpy().copy()
            self._item_bias = model.item_bias.detach().double().numpy().copy()
            self._user_vec = model.user_vec.detach().double().numpy().copy()
            self._item_vec = model.item_vec.detach().double().numpy().copy()
            self._dense_weight = model.dense_weight.detach().double().numpy().copy()
        # (mean, scale) of the dense training columns; None when fitted without dense inputs.
        self._dense_scaling = dense_scaling

    @property
    def n_dense(self) -> int:
        """Number of dense input columns the ranker was fitted with (0: ID-only)."""
        return len(self._dense_weight)

    @property
    def dim(self) -> int:
        return self._item_vec.shape[1]

    @classmethod
    def fit(cls, log_fit: pd.DataFrame, dim: int = 32, epochs: int = 30, seed: int = 0, lr: float = 0.01,
            l2: float = 0.03, batch_size: int = 8192, valid_fraction: float = 0.1, patience: int = 2,
            refit: bool = True, name: str = "log", dense=None) -> "IdCtrRanker":
        """Train on ``log_fit`` (columns ``user_id``, ``item_id``, ``label``, ``timestamp``).

        Options: ``dim`` factor size; ``epochs`` upper bound (early stopping usually ends
        sooner); ``lr`` Adam learning rate; ``l2`` penalty on the touched factor rows;
        ``batch_size`` (upper bound: small logs use smaller batches, at least 32 steps an
        epoch); ``valid_fraction`` of the rows (latest by time) held out for early
        stopping, with ``patience`` epochs without improvement; ``refit`` retrains on all
        rows for the best epoch count (otherwise the selection run's best state is kept).
        ``dense``: optional (n_rows, k) array of extra numeric inputs, one row per row of
        ``log_fit`` (finite), entering the logit linearly after standardisation.
        """
        _check_fit_args(log_fit, dim, epochs, batch_size, valid_fraction, name)
        dense_tensor, dense_scaling = _standardised_dense(dense, len(log_fit), name)
        user_index = pd.Index(pd.unique(log_fit["user_id"].astype(str)))
        item_index = pd.Index(pd.unique(log_fit["item_id"].astype(str)))
        users = torch.from_numpy(user_index.get_indexer(log_fit["user_id"].astype(str)).astype(np.int64))
        items = torch.from_numpy(item_index.get_indexer(log_fit["item_id"].astype(str)).astype(np.int64))
        labels = torch.from_numpy(log_fit["label"].to_numpy(dtype=np.float32))
        item_counts = np.bincount(items.numpy(), minlength=len(item_index))
        trained_until = int(log_fit["timestamp"].max()) if "timestamp" in log_fit.columns else None

        # Hold out the latest rows (the log is time-ordered) to pick the number of epochs.
        order = np.argsort(log_fit["timestamp"].to_numpy(), kind="stable") if trained_until is not None \
            else np.arange(len(log_fit))
        n_valid = int(len(order) * valid_fraction)
        train_rows = torch.from_numpy(order[: len(order) - n_valid])
        valid_rows = torch.from_numpy(order[len(order) - n_valid:])
        sizes = (len(user_index), len(item_index), dim)
        # Small logs still get >= 32 Adam steps per epoch (8192-row batches would give a
        # 20k-row log 3 steps an epoch and never converge within `epochs`).
        batch_size = int(min(batch_size, max(512, -(-len(order) // 32))))
        train = dict(users=users, items=items, labels=labels, lr=lr, l2=l2, batch_size=batch_size,
                     dense=dense_tensor)

        with one_torch_thread():
            if n_valid > 0:
                model, history, best_epochs = _train(sizes, seed, epochs, train_rows, valid_rows, patience, **train)
                if refit:
                    all_rows = torch.from_numpy(order)
                    model, _, _ = _train(sizes, seed, best_epochs, all_rows, None, patience, **train)
            else:
                model, history, _ = _train(sizes, seed, epochs, torch.from_numpy(order), None, patience, **train)
        return cls(user_index, item_index, model, item_counts, trained_until, history, dense_scaling)

    def predict_logits(self, log_rows: pd.DataFrame, dense=None) -> np.ndarray:
        """Logits (float64, one per row) for ``user_id``/``item_id`` rows; unknown ids are cold.

        ``dense`` (n_rows, k) is required exactly when the ranker was fitted with dense inputs
        (same k columns, same meaning); it is standardised with the training statistics.
        """
        u = self.user_index.get_indexer(log_rows["user_id"].astype(str))
        i = self.item_index.get_indexer(log_rows["item_id"].astype(str))
        known_u, known_i = u >= 0, i >= 0
        logits = np.full(len(u), self._bias, dtype=np.float64)
        logits[known_u] += self._user_bias[u[known_u]]
        logits[known_i] += self._item_bias[i[known_i]]
        both = known_u & known_i
        logits[both] += np.einsum("nd,nd->n", self._user_vec[u[both]], self._item_vec[i[both]])
        if self._dense_scaling is not None or dense is not None:
            logits += self._dense_term(dense, len(logits))
        return logits

    def _dense_term(self, dense, n_rows: int) -> np.ndarray:
        if self._dense_scaling is None:
            raise DataError("ranker: dense inputs were given but the ranker was fitted without them.")
        if dense is None:
            raise DataError(f"ranker: fitted with {self.n_dense} dense input columns; pass dense= to predict_logits.")
        values = _dense_matrix(dense, n_rows, "ranker")
        if values.shape[1] != self.n_dense:
            raise DataError(f"ranker: dense inputs have {values.shape[1]} columns; the ranker was fitted on {self.n_dense}.")
        mean, scale = self._dense_scaling
        return ((values - mean) / scale) @ self._dense_weight

    def item_embeddings(self, min_count: int = 1) -> tuple[list[str], np.ndarray]:
        """``(ids, vectors)``: the item factor table (float32), restricted to items with at
        least ``min_count`` training impressions (rarely seen items have noisy factors)."""
        keep = self.item_counts >= int(min_count)
        ids = [str(x) for x in self.item_index[keep]]
        return ids, self._item_vec[keep].astype(np.float32)


def _train(sizes, seed, epochs, rows, valid_rows, patience, *, users, items, labels, lr, l2, batch_size,
           dense=None):
    """One training run; returns (model at its best epoch, history, best epoch count)."""
    generator = torch.Generator().manual_seed(int(seed))
    n_users, n_items, dim = sizes
    model = _MF(n_users, n_items, dim, generator, n_dense=0 if dense is None else dense.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history, best, best_state, best_epochs, stale = [], float("inf"), None, epochs, 0
    for epoch in range(1, epochs + 1):
        model.train()
        shuffled = rows[torch.randperm(len(rows), generator=generator)]
        total = 0.0
        for start in range(0, len(shuffled), batch_size):
            batch = shuffled[start: start + batch_size]
            logit, penalty = model(users[batch], items[batch], None if dense is None else dense[batch])
            loss = loss_fn(logit, labels[batch])
            optimiser.zero_grad(set_to_none=True)
            (loss + l2 * penalty).backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        record = {"epoch": epoch, "train_loss": total / max(len(rows), 1)}
        if valid_rows is not None:
            record["valid_loss"] = _valid_loss(model, users, items, labels, valid_rows, loss_fn, dense)
            if record["valid_loss"] < best - 1e-5:
                best, best_epochs, stale = record["valid_loss"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(record)
        if valid_rows is not None and stale >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, history, best_epochs


@torch.no_grad()
def _valid_loss(model, users, items, labels, rows, loss_fn, dense=None) -> float:
    model.eval()
    logit, _ = model(users[rows], items[rows], None if dense is None else dense[rows])
    return float(loss_fn(logit, labels[rows]))


def _dense_matrix(dense, n_rows: int, name: str) -> np.ndarray:
    """``dense`` as a finite float64 (n_rows, k) matrix, or a DataError naming the first bad cell."""
    values = np.asarray(dense, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != n_rows:
        raise DataError(f"{name}: dense inputs must be an (n_rows, k) array with one row per impression ({n_rows}); "
                        f"got shape {values.shape}.")
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{name}: dense inputs must be finite; row {row}, column {col} holds {describe_value(values[row, col])}.")
    return values


def _standardised_dense(dense, n_rows: int, name: str):
    """(float32 tensor of standardised columns, (mean, scale)) or (None, None) without dense inputs."""
    if dense is None:
        return None, None
    values = _dense_matrix(dense, n_rows, name)
    mean, scale = values.mean(axis=0), values.std(axis=0)
    scale[scale == 0] = 1.0
    return torch.from_numpy(((values - mean) / scale).astype(np.float32)), (mean, scale)


def _check_fit_args(log_fit, dim, epochs, batch_size, valid_fraction, name):
    missing = [c for c in ("user_id", "item_id", "label") if c not in log_fit.columns]
    if missing:
        raise DataError(f"{name}: column '{missing[0]}' is missing; the built-in ranker needs it.")
    if len(log_fit) == 0:
        raise DataError(f"{name}: the built-in ranker got no impressions to train on.")
    for option, value, low in (("dim", dim, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"ranker option '{option}' must be an integer >= {low}; got {describe_value(value)}.")
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise ConfigError(f"ranker option 'valid_fraction' must lie in [0, 1); got {describe_value(valid_fraction)}.")


def column_logits(log: pd.DataFrame, name: str = "log") -> np.ndarray:
    """The log's ``base_logit`` column as float64, validated (present, numeric, finite)."""
    if "base_logit" not in log.columns:
        raise DataError(f"{name}: column 'base_logit' is missing; it is needed for the ranker source "
                        f"'column' (or use the built-in ranker).")
    try:
        values = pd.to_numeric(log["base_logit"], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        values = pd.to_numeric(log["base_logit"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"{name}: column 'base_logit' must hold finite numbers; row {row} holds "
            f"{describe_value(log['base_logit'].iloc[row])} (user {describe_value(str(log['user_id'].iloc[row]))}, "
            f"item {describe_value(str(log['item_id'].iloc[row]))}); {len(bad)} rows are bad."
        )
    return values
