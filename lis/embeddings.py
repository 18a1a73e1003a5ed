"""Item-embedding tables: the safetensors file every part of lis-align exchanges.

One file holds the tensor ``embeddings`` (float32, n x d); the item ids and the manifest are
stored in the file's header metadata (``ids``, ``manifest``, both JSON), so a table can never
be separated from its ids. Manifest keys: ``model``, ``adapter_hash``, ``step``, ``dim``,
``catalogue_hash``, ``source``, ``trained_until`` (the latest log timestamp any training
data of the table came from; ``None`` when it saw no log data), ``builder`` and
``builder_options`` (the preference-data builder whose pairs trained the table, and its
options as passed to :func:`lis.builders.build_pairs`; ``None`` when unknown). AIS refuses a
table whose ``trained_until`` reaches into the evaluation window; eta is computed against the
LIS of ``builder`` with ``builder_options`` (docs/science.md, "eta").
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lis.atomic import write_bytes
from lis.errors import DataError, describe_value

MANIFEST_KEYS = ("model", "adapter_hash", "step", "dim", "catalogue_hash", "source", "trained_until", "builder",
                 "builder_options")


@dataclass
class EmbeddingTable:
    """Item ids and their vectors (float32, one row per id) plus the manifest."""

    ids: list[str]
    vectors: np.ndarray
    manifest: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self._position = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, ids) -> np.ndarray:
        """Row of each id in ``vectors`` (int64), -1 where the table lacks the id."""
        if self._position is None:
            self._position = {item: row for row, item in enumerate(self.ids)}
        lookup = self._position
        return np.fromiter((lookup.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))


def make_manifest(dim: int, source: str, **fields) -> dict:
    manifest = {key: None for key in MANIFEST_KEYS}
    manifest.update(dim=int(dim), source=source)
    manifest.update(fields)
    return manifest


def validate_table(table: EmbeddingTable, name: str) -> EmbeddingTable:
    vectors = table.vectors
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise DataError(f"{name}: tensor 'embeddings' must be a non-empty 2-D (n, d) array; got shape {tuple(vectors.shape)}.")
    if len(table.ids) != vectors.shape[0]:
        raise DataError(
            f"{name}: field 'ids' lists {len(table.ids)} ids but tensor 'embeddings' has {vectors.shape[0]} rows."
        )
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise DataError(
            f"{name}: tensor 'embeddings' must be finite; row {row} (item {table.ids[row]!r}) holds "
            f"{describe_value(vectors[row][~np.isfinite(vectors[row])][0].item())}."
        )
    seen: dict[str, int] = {}
    for row, item in enumerate(table.ids):
        if item in seen:
            raise DataError(f"{name}: field 'ids' must be unique; {item!r} appears at rows {seen[item]} and {row}.")
        seen[item] = row
    _check_provenance(table.manifest, name)
    declared = table.manifest.get("dim")
    if declared is not None and int(declared) != vectors.shape[1]:
        raise DataError(f"{name}: manifest field 'dim' says {declared} but tensor 'embeddings' has {vectors.shape[1]} columns.")
    return table


def _check_provenance(manifest: dict, name: str) -> None:
    """``builder`` is a known builder name (or None); ``builder_options`` a dict of its options."""
    from lis.builders import BUILDERS, builder_options

    builder, options = manifest.get("builder"), manifest.get("builder_options")
    if builder is None:
        if options:
            raise DataError(f"{name}: manifest field 'builder_options' is set ({options!r}) but 'builder' is not.")
        return
    if builder not in BUILDERS:
        raise DataError(f"{name}: manifest field 'builder' must be one of {', '.join(BUILDERS)}; got {builder!r}.")
    if options is None:
        return
    if not isinstance(options, dict):
        raise DataError(f"{name}: manifest field 'builder_options' must be a JSON object; got {options!r}.")
    unknown = sorted(set(options) - set(builder_options(builder)))
    if unknown:
        raise DataError(f"{name}: manifest field 'builder_options' has {unknown[0]!r}, which builder '{builder}' "
                        f"does not take (its options: {', '.join(builder_options(builder)) or 'none'}).")


def save_embeddings(path: str | os.PathLike, table: EmbeddingTable) -> None:
    """Validate and write ``table`` atomically as safetensors with ids and manifest in the header.

    Equal tables give equal bytes: the header is rewritten with sorted keys, because
    safetensors serialises metadata from a hash map whose order changes between processes.
    """
    from safetensors.numpy import save

    validate_table(table, Path(path).name)
    manifest = dict(table.manifest)
    manifest["dim"] = table.dim
    metadata = {"ids": json.dumps(table.ids), "manifest": json.dumps(manifest, default=_plain, sort_keys=True)}
    write_bytes(path, _canonical_header(save({"embeddings": table.vectors}, metadata=metadata)))


def _canonical_header(data: bytes) -> bytes:
    """The same safetensors bytes with the JSON header's keys sorted (padded to 8 bytes)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def load_embeddings(path: str | os.PathLike, expected_dim: int | None = None) -> EmbeddingTable:
    """Read and validate an embeddings file; every problem is a :class:`DataError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DataError(f"{path}: embeddings file not found.")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if "embeddings" not in handle.keys():
                raise DataError(f"{name}: no tensor 'embeddings' (found {sorted(handle.keys())}).")
            vectors = handle.get_tensor("embeddings")
    except DataError:
        raise
    except Exception as error:  # safetensors raises its own types for corrupt headers
        raise DataError(f"{name}: not a readable safetensors file ({error}).") from None
    if "ids" not in metadata:
        raise DataError(f"{name}: header metadata lacks field 'ids' (the item id of each row).")
    try:
        ids = json.loads(metadata["ids"])
        manifest = json.loads(metadata.get("manifest", "{}"))
    except json.JSONDecodeError as error:
        raise DataError(f"{name}: header field 'ids' or 'manifest' is not valid JSON ({error}).") from None
    _check_header(ids, manifest, name)
    if not np.issubdtype(vectors.dtype, np.floating):
        raise DataError(f"{name}: tensor 'embeddings' must be float; got dtype {vectors.dtype}.")
    table = validate_table(EmbeddingTable(ids, vectors, manifest), name)
    if expected_dim is not None and table.dim != expected_dim:
        raise DataError(f"{name}: tensor 'embeddings' has dimension {table.dim}; expected {expected_dim}.")
    return table


INTEGER_FIELDS = ("dim", "step", "trained_until")  # manifest fields that are whole numbers or null


def _check_header(ids, manifest, name: str) -> None:
    """The header's JSON has the shapes the rest of the code relies on: ``ids`` a list of
    strings or integers, ``manifest`` an object whose ``dim``/``step``/``trained_until`` are integers or null."""
    if not isinstance(ids, list):
        raise DataError(f"{name}: header field 'ids' must be a JSON list of item ids; got {describe_value(ids)}.")
    for row, item in enumerate(ids):
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise DataError(f"{name}: header field 'ids' must hold strings; row {row} holds {describe_value(item)}.")
    if not isinstance(manifest, dict):
        raise DataError(f"{name}: header field 'manifest' must be a JSON object; got {describe_value(manifest)}.")
    for key in INTEGER_FIELDS:
        value = manifest.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise DataError(f"{name}: manifest field '{key}' must be an integer or null; got {describe_value(value)}.")


def catalogue_hash(catalogue) -> str:
    """A short content hash of the catalogue's ids and texts: ties a table to the catalogue it embeds."""
    digest = hashlib.sha256()
    for item, text in zip(catalogue["item_id"].astype(str), catalogue["text"].astype(str)):
        digest.update(item.encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
