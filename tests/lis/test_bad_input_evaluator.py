"""Bad input to every evaluator command (synth, data validate/import, pairs build, lis score):
exit 2, one line naming the file or flag, the field and the bad value, nothing written
(the contract is checked by :func:`tests.bad_input.expect_bad_input`)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lis.cli import main
from tests.bad_input import expect_bad_input
from tests.lis.conftest import tiny_png, tiny_tables, write_datadir


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The tiny simulated platform (read-only for these tests)."""
    from lis.synth import simulate

    root = tmp_path_factory.mktemp("bad_input_world") / "world"
    simulate("tiny", 0, root, progress=False)
    return root


@dataclass
class Workspace:
    tmp: Path
    world: Path

    @property
    def data(self) -> Path:
        """A fresh valid tiny data dir (4 items, 8 impressions), created on first use."""
        root = self.tmp / "data"
        if not root.exists():
            write_datadir(root)
        return root

    def datadir(self, catalogue=None, log=None, images=True, name="bad") -> Path:
        return write_datadir(self.tmp / name, catalogue, log, images)

    def table(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.tmp / name
        if name.endswith(".csv"):
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return path

    def embeddings(self, ids="default", manifest=None, vectors=None, name="emb.safetensors") -> Path:
        """A safetensors table whose header is written raw, so any malformed value can be given."""
        from safetensors.numpy import save_file

        ids = [f"i{k}" for k in range(4)] if ids == "default" else ids
        vectors = np.ones((4, 3), np.float32) if vectors is None else vectors
        path = self.tmp / name
        save_file({"embeddings": vectors}, str(path),
                  metadata={"ids": json.dumps(ids), "manifest": json.dumps({} if manifest is None else manifest)})
        return path


def _catalogue(**columns):
    catalogue, _ = tiny_tables()
    for name, values in columns.items():
        catalogue[name] = values
    return catalogue


def _log(**columns):
    _, log = tiny_tables()
    for name, values in columns.items():
        log[name] = values
    return log


def _validate(ws, path, *extra):
    return ["data", "validate", path, *extra]


LONG_ID = "x" * 5000

# ----------------------------------------------------------------------------- data validate
# Each case: id -> (argv built from the workspace, words the one line must contain).
VALIDATE = {
    "missing_dir": lambda ws: (_validate(ws, ws.tmp / "nowhere"), ["nowhere", "not found"]),
    "dir_is_a_file": lambda ws: (_validate(ws, ws.table("f.csv", pd.DataFrame({"a": [1]}))), ["f.csv", "not a directory"]),
    "no_catalogue": lambda ws: (_validate(ws, _drop(ws.data, "catalogue.parquet")), ["no catalogue table"]),
    "no_log": lambda ws: (_validate(ws, _drop(ws.data, "log.parquet")), ["no log table"]),
    "catalogue_without_item_id": lambda ws: (
        _validate(ws, ws.datadir(_catalogue().drop(columns="item_id"))), ["catalogue.parquet", "item_id"]),
    "duplicate_item_id": lambda ws: (
        _validate(ws, ws.datadir(_catalogue(item_id=["i0", "i1", "i1", "i3"]))), ["catalogue.parquet", "item_id", "'i1'"]),
    "null_item_id": lambda ws: (
        _validate(ws, ws.datadir(_catalogue(item_id=["i0", None, "i2", "i3"]))), ["catalogue.parquet", "item_id", "row 1"]),
    "empty_catalogue": lambda ws: (
        _validate(ws, ws.datadir(_catalogue().iloc[:0])), ["catalogue.parquet", "empty"]),
    "log_item_unknown": lambda ws: (
        _validate(ws, ws.datadir(log=_log(item_id=["i0", "zz"] + ["i1"] * 6))), ["log.parquet", "item_id", "'zz'"]),
    "log_item_5000_chars": lambda ws: (
        _validate(ws, ws.datadir(log=_log(item_id=["i0", LONG_ID] + ["i1"] * 6))), ["log.parquet", "item_id", "xxx"]),
    "label_3": lambda ws: (_validate(ws, ws.datadir(log=_log(label=[0, 1, 3, 0, 1, 0, 1, 0]))), ["log.parquet", "label", "3"]),
    "label_null": lambda ws: (
        _validate(ws, ws.datadir(log=_log(label=[0, 1, None, 0, 1, 0, 1, 0]))), ["log.parquet", "label", "row 2"]),
    "timestamp_backwards": lambda ws: (
        _validate(ws, ws.datadir(log=_log(timestamp=[5, 4, 6, 7, 8, 9, 10, 11]))), ["log.parquet", "timestamp", "row 1"]),
    "timestamp_garbage": lambda ws: (
        _validate(ws, ws.datadir(log=_log(timestamp=["soon"] * 8))), ["log.parquet", "timestamp", "'soon'"]),
    "timestamp_milliseconds": lambda ws: (
        _validate(ws, ws.datadir(log=_log(timestamp=[1_700_000_000_000 + k for k in range(8)]))),
        ["log.parquet", "timestamp", "1700000000000"]),
    "base_logit_inf": lambda ws: (
        _validate(ws, ws.datadir(log=_log(base_logit=[0.0, np.inf] + [0.0] * 6))), ["log.parquet", "base_logit", "inf"]),
    "image_dot_dot": lambda ws: (
        _validate(ws, ws.datadir(_catalogue(image=["../x.png"] + [f"images/i{k}.png" for k in range(1, 4)]))),
        ["catalogue.parquet", "image", "'../x.png'", "outside"]),
    "image_absolute_elsewhere": lambda ws: (
        _validate(ws, ws.datadir(_catalogue(image=[str(tiny_png(ws.tmp / "else" / "x.png"))] + [f"images/i{k}.png" for k in range(1, 4)]))),
        ["catalogue.parquet", "image", "row 0", "outside"]),
    "image_symlink_outside": lambda ws: (_validate(ws, _symlinked_image(ws)), ["catalogue.parquet", "image", "i0.png", "outside"]),
    "image_symlink_outside_no_images": lambda ws: (
        _validate(ws, _symlinked_image(ws), "--no-images"), ["catalogue.parquet", "image", "i0.png", "outside"]),
    "image_missing_file": lambda ws: (_validate(ws, _drop(ws.data, "images/i2.png")), ["catalogue.parquet", "image", "i2.png"]),
    "image_not_an_image": lambda ws: (_validate(ws, _scribble(ws.data, "images/i1.png")), ["catalogue.parquet", "image", "i1.png"]),
    "catalogue_corrupt": lambda ws: (_validate(ws, _scribble(ws.data, "catalogue.parquet")), ["catalogue.parquet"]),
    "log_csv_not_utf8": lambda ws: (_validate(ws, _non_utf8_log(ws)), ["log.csv"]),
    "embeddings_missing": lambda ws: (_validate(ws, ws.data, "--embeddings", ws.tmp / "none.safetensors"),
                                      ["none.safetensors", "not found"]),
    "embeddings_not_safetensors": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.table("e.csv", pd.DataFrame({"a": [1]}))), ["e.csv", "safetensors"]),
    "embeddings_ids_null": lambda ws: (_validate(ws, ws.data, "--embeddings", ws.embeddings(ids=None)),
                                       ["emb.safetensors", "'ids'", "None"]),
    "embeddings_ids_5": lambda ws: (_validate(ws, ws.data, "--embeddings", ws.embeddings(ids=5)), ["emb.safetensors", "'ids'", "5"]),
    "embeddings_ids_hold_null": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(ids=["i0", None, "i2", "i3"])), ["emb.safetensors", "'ids'", "row 1"]),
    "embeddings_manifest_list": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(manifest=[1, 2])), ["emb.safetensors", "'manifest'", "[1, 2]"]),
    "embeddings_dim_string": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(manifest={"dim": "3"})), ["emb.safetensors", "'dim'", "'3'"]),
    "embeddings_dim_float": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(manifest={"dim": 3.5})), ["emb.safetensors", "'dim'", "3.5"]),
    "embeddings_trained_until_float": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(manifest={"trained_until": 1.5})),
        ["emb.safetensors", "'trained_until'", "1.5"]),
    "embeddings_trained_until_text": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(manifest={"trained_until": "yesterday"})),
        ["emb.safetensors", "'trained_until'", "'yesterday'"]),
    "embeddings_step_text": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(manifest={"step": "x"})), ["emb.safetensors", "'step'", "'x'"]),
    "embeddings_rows_ids_mismatch": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(ids=["i0", "i1"])), ["emb.safetensors", "'ids'", "2 ids"]),
    "embeddings_nan_row": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(vectors=np.array([[1, 2, 3]] * 3 + [[np.nan, 0, 0]], np.float32))),
        ["emb.safetensors", "'embeddings'", "row 3", "nan"]),
    "embeddings_duplicate_ids": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(ids=["i0", "i1", "i1", "i3"])), ["emb.safetensors", "'ids'", "'i1'"]),
    "embeddings_no_overlap": lambda ws: (
        _validate(ws, ws.data, "--embeddings", ws.embeddings(ids=["a", "b", "c", "d"])), ["emb.safetensors", "'ids'", "'a'"]),
    "pairs_missing": lambda ws: (_validate(ws, ws.data, "--pairs", ws.tmp / "p.parquet"), ["p.parquet"]),
    "pairs_negative_weight": lambda ws: (
        _validate(ws, ws.data, "--pairs", ws.table("p.parquet", pd.DataFrame({"anchor_id": ["i0"], "positive_id": ["i1"],
                                                                              "weight": [-1.0]}))),
        ["p.parquet", "weight", "-1"]),
    "pairs_unknown_item": lambda ws: (
        _validate(ws, ws.data, "--pairs", ws.table("p.parquet", pd.DataFrame({"anchor_id": ["i0"], "positive_id": ["nope"]}))),
        ["p.parquet", "positive_id", "'nope'"]),
}


def _drop(root: Path, name: str) -> Path:
    (root / name).unlink()
    return root


def _scribble(root: Path, name: str) -> Path:
    (root / name).write_bytes(b"this is not what the name says")
    return root


def _symlinked_image(ws) -> Path:
    root = ws.data
    outside = tiny_png(ws.tmp / "outside" / "secret.png")
    (root / "images" / "i0.png").unlink()
    os.symlink(outside, root / "images" / "i0.png")
    return root


def _non_utf8_log(ws) -> Path:
    root = ws.data
    (root / "log.parquet").unlink()
    (root / "log.csv").write_bytes(b"user_id,item_id,timestamp,label\nu\xff\xfe,i0,1,1\n")
    return root


# ----------------------------------------------------------------------------- data import
def _events(ws, **columns) -> Path:
    frame = pd.DataFrame({"user_id": ["u0", "u1"], "item_id": ["a", "b"], "timestamp": [1, 2], "label": [1, 0]})
    for name, values in columns.items():
        frame[name] = values
    return ws.table("events.csv", frame)


def _csv(ws, events, *extra, out=None):
    return ["data", "import", "csv", events, "--out", out or ws.tmp / "imported", *extra]


def _with_images(ws, value) -> tuple[Path, Path]:
    """An interactions table whose item 'a' has image ``value`` and 'b' a good one, under root ``pics``."""
    root = ws.tmp / "pics"
    tiny_png(root / "b.png")
    return _events(ws, image=[value, "b.png"]), root


def _recbole(ws, inter="user_id:token\titem_id:token\trating:float\ttimestamp:float\nu\ta\t5\t1\n",
             item="item_id:token\ttitle:token_seq\na\tAlpha\n"):
    (ws.tmp / "x.inter").write_text(inter)
    (ws.tmp / "x.item").write_text(item)
    return ["data", "import", "recbole", ws.tmp / "x.inter", ws.tmp / "x.item", "--out", ws.tmp / "rb"]


IMPORT = {
    "csv_missing_file": lambda ws: (_csv(ws, ws.tmp / "none.csv"), ["none.csv"]),
    "csv_missing_user_col": lambda ws: (_csv(ws, _events(ws), "--user-col", "who"), ["events.csv", "'who'", "user_col"]),
    "csv_time_garbage": lambda ws: (_csv(ws, _events(ws, timestamp=["later", "2"])), ["events.csv", "timestamp", "'later'"]),
    "csv_label_2": lambda ws: (_csv(ws, _events(ws, label=[1, 2])), ["events.csv", "label", "2"]),
    "csv_rating_text": lambda ws: (
        _csv(ws, _events(ws, stars=["5", "great"]), "--rating-col", "stars"), ["events.csv", "'stars'", "'great'"]),
    "csv_rating_threshold_nan": lambda ws: (_csv(ws, _events(ws), "--rating-threshold", "nan"), ["--rating-threshold", "nan"]),
    "csv_label_and_rating": lambda ws: (
        _csv(ws, _events(ws, stars=[5, 1]), "--label-col", "label", "--rating-col", "stars"), ["events.csv", "'label'", "'stars'"]),
    "csv_out_is_a_file": lambda ws: (_csv(ws, _events(ws), out=ws.table("taken.csv", pd.DataFrame({"a": [1]}))),
                                     ["--out", "taken.csv", "existing file"]),
    "csv_out_not_empty": lambda ws: (_csv(ws, _events(ws), out=_busy(ws)), ["busy", "not empty", "--overwrite"]),
    "csv_out_holds_the_input": lambda ws: (_csv(ws, _events(ws), "--overwrite", out=ws.tmp), ["--out", "events.csv", "input"]),
    "csv_out_holds_images_root": lambda ws: (
        _csv(ws, _events(ws), "--images-root", _mkdir(ws.tmp / "pics"), "--overwrite", out=ws.tmp),
        ["--out", "input"]),
    "csv_image_absolute_outside_root": lambda ws: (
        _csv(ws, *_img_args(ws, str(tiny_png(ws.tmp / "elsewhere" / "a.png")))), ["events.csv", "image", "row 0", "outside"]),
    "csv_image_dot_dot": lambda ws: (_csv(ws, *_img_args(ws, "../a.png")), ["events.csv", "image", "'../a.png'", "outside"]),
    "csv_image_symlink_outside_root": lambda ws: (_csv(ws, *_img_args(ws, _linked(ws))), ["events.csv", "image", "row 0", "outside"]),
    "csv_image_missing": lambda ws: (_csv(ws, *_img_args(ws, "gone.png")), ["events.csv", "image", "'gone.png'"]),
    "csv_image_not_an_image": lambda ws: (_csv(ws, *_img_args(ws, _scribbled_png(ws))), ["events.csv", "image", "'a.png'"]),
    "csv_image_url": lambda ws: (_csv(ws, *_img_args(ws, "https://x.org/a.png")), ["events.csv", "image", "URL"]),
    "csv_catalogue_missing": lambda ws: (_csv(ws, _events(ws), "--catalogue", ws.tmp / "items.csv"), ["items.csv"]),
    "csv_catalogue_without_id": lambda ws: (
        _csv(ws, _events(ws), "--catalogue", ws.table("items.csv", pd.DataFrame({"sku": ["a"], "text": ["x"]}))),
        ["items.csv", "'item_id'", "catalogue_item_col"]),
    "csv_no_known_item": lambda ws: (
        _csv(ws, _events(ws), "--catalogue", ws.table("items.csv", pd.DataFrame({"item_id": ["z"], "text": ["x"]}))),
        ["events.csv", "items.csv", "'a'"]),
    "recbole_missing_file": lambda ws: (["data", "import", "recbole", ws.tmp / "n.inter", ws.tmp / "n.item", "--out", ws.tmp / "o"],
                                        ["n.inter", "not found"]),
    "recbole_bad_header_type": lambda ws: (_recbole(ws, inter="user_id:token\titem_id:thing\nu\ta\n"), ["x.inter", "'item_id:thing'"]),
    "recbole_float_text": lambda ws: (
        _recbole(ws, inter="user_id:token\titem_id:token\trating:float\ttimestamp:float\nu\ta\tgood\t1\n"),
        ["x.inter", "'rating'", "'good'"]),
    "recbole_missing_time_field": lambda ws: (
        _recbole(ws, inter="user_id:token\titem_id:token\nu\ta\n"), ["x.inter", "'timestamp'", "time_field"]),
    "recbole_missing_text_field": lambda ws: (
        _recbole(ws) + ["--text-fields", "plot"], ["x.item", "'plot'", "text_fields"]),
    "recbole_out_holds_the_input": lambda ws: (
        _recbole(ws)[:-1] + [ws.tmp, "--overwrite"], ["--out", "x.inter", "input"]),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _busy(ws) -> Path:
    (ws.tmp / "busy").mkdir()
    (ws.tmp / "busy" / "keep.txt").write_text("mine")
    return ws.tmp / "busy"


def _img_args(ws, value):
    events, root = _with_images(ws, value)
    return events, "--images-root", root


def _linked(ws) -> str:
    outside = tiny_png(ws.tmp / "private" / "a.png")
    (ws.tmp / "pics").mkdir(parents=True, exist_ok=True)
    os.symlink(outside, ws.tmp / "pics" / "a.png")
    return "a.png"


def _scribbled_png(ws) -> str:
    (ws.tmp / "pics").mkdir(parents=True, exist_ok=True)
    (ws.tmp / "pics" / "a.png").write_text("not a png")
    return "a.png"


# ----------------------------------------------------------------------------- pairs build
def _pairs(ws, *extra, builder="random", out=None, data=None):
    return ["pairs", "build", "--data", data or ws.world, "--builder", builder, "--out", out or ws.tmp / "pairs.parquet", *extra]


def _user_pairs(ws) -> Path:
    return ws.table("mine.parquet", pd.DataFrame({"anchor_id": ["i0"], "positive_id": ["i1"]}))


PAIRS = {
    "unknown_builder": lambda ws: (_pairs(ws, builder="nope"), ["--builder", "'nope'"]),
    "out_is_a_directory": lambda ws: (_pairs(ws, out=_mkdir(ws.tmp / "pairs_dir")), ["--out", "pairs_dir", "directory"]),
    "out_is_the_catalogue": lambda ws: (_pairs(ws, out=ws.data / "catalogue.parquet", data=ws.data), ["--out", "catalogue.parquet", "input"]),
    "out_is_the_log": lambda ws: (_pairs(ws, out=ws.data / "log.parquet", data=ws.data), ["--out", "log.parquet", "input"]),
    "out_inside_images": lambda ws: (_pairs(ws, out=ws.data / "images" / "p.parquet", data=ws.data), ["--out", "p.parquet", "images"]),
    "out_via_symlink_to_the_log": lambda ws: (_pairs(ws, out=_link_to(ws, ws.data / "log.parquet"), data=ws.data), ["--out", "alias", "input"]),
    "out_is_the_pairs_file": lambda ws: (
        _pairs(ws, "--pairs-file", _user_pairs(ws), builder="user", out=ws.tmp / "mine.parquet"), ["--out", "mine.parquet", "input"]),
    "option_without_equals": lambda ws: (_pairs(ws, "--option", "window"), ["--option", "'window'"]),
    "option_unknown_key": lambda ws: (_pairs(ws, "--option", "colour=red"), ["colour"]),
    "top_k_0": lambda ws: (_pairs(ws, "--top-k", "0"), ["top_k", "0"]),
    "eval_fraction_1_5": lambda ws: (_pairs(ws, "--eval-fraction", "1.5"), ["eval_fraction", "1.5"]),
    "window_bad": lambda ws: (_pairs(ws, "--window", "future"), ["--window", "'future'"]),
    "seed_text": lambda ws: (_pairs(ws, "--seed", "abc"), ["--seed", "'abc'"]),
    "data_missing": lambda ws: (["pairs", "build", "--data", ws.tmp / "gone", "--builder", "random", "--out", ws.tmp / "p.parquet"],
                                ["gone", "not found"]),
    "user_without_file": lambda ws: (_pairs(ws, builder="user"), ["user", "path"]),
}


def _link_to(ws, target: Path) -> Path:
    os.symlink(target, ws.tmp / "alias.parquet")
    return ws.tmp / "alias.parquet"


# ----------------------------------------------------------------------------- lis score
def _score(ws, *extra, out=None, data=None):
    return ["lis", "score", "--data", data or ws.world, "--builder", "random", "--bootstrap", "10", "--oracle-steps", "5",
            "--out", out or ws.tmp / "report.json", *extra]


def _good_table(ws, **manifest) -> Path:
    ids = [f"i{k}" for k in range(200)]
    return ws.embeddings(ids=ids, vectors=np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32),
                         manifest=manifest, name="table.safetensors")


SCORE = {
    "out_is_a_directory": lambda ws: (_score(ws, out=_mkdir(ws.tmp / "rep")), ["--out", "rep", "directory"]),
    "out_is_the_log": lambda ws: (_score(ws, out=ws.data / "log.parquet", data=ws.data), ["--out", "log.parquet", "input"]),
    "out_is_the_catalogue": lambda ws: (
        _score(ws, out=ws.data / "catalogue.parquet", data=ws.data), ["--out", "catalogue.parquet", "input"]),
    "out_md_sibling_is_the_log": lambda ws: (
        _score(ws, out=_md_named_log(ws), data=ws.data), ["--out", "log.md", "input"]),
    "out_is_an_embeddings_input": lambda ws: (
        _score(ws, "--embeddings", _good_table(ws), out=ws.tmp / "table.safetensors"), ["--out", "table.safetensors", "input"]),
    "out_ends_in_md": lambda ws: (_score(ws, out=ws.tmp / "r.md"), ["--out", "r.md", ".md"]),
    "out_png_sibling_is_a_directory": lambda ws: (
        _score(ws, out=_png_dir(ws)), ["--out", "report.png", "directory"]),
    "oracle_steps_minus_1": lambda ws: (_score(ws, "--oracle-steps", "-1"), ["--oracle-steps", "-1"]),
    "oracle_steps_0": lambda ws: (_score(ws, "--oracle-steps", "0"), ["--oracle-steps", "0"]),
    "workers_0": lambda ws: (_score(ws, "--workers", "0"), ["--workers", "0"]),
    "oracle_dim_0": lambda ws: (_score(ws, "--oracle-dim", "0"), ["--oracle-dim", "0"]),
    "bootstrap_0": lambda ws: (_score(ws, "--bootstrap", "0"), ["--bootstrap", "0"]),
    "bootstrap_5": lambda ws: (_score(ws, "--bootstrap", "5"), ["n_bootstrap", "5"]),
    "history_len_0": lambda ws: (_score(ws, "--history-len", "0"), ["--history-len", "0"]),
    "eval_fraction_0": lambda ws: (_score(ws, "--eval-fraction", "0"), ["eval_fraction", "0"]),
    "builder_unknown": lambda ws: (_score(ws, "--builder", "nope"), ["--builder", "'nope'"]),
    "builder_twice": lambda ws: (_score(ws, "--builder", "random"), ["--builder", "random"]),
    "builder_option_format": lambda ws: (_score(ws, "--builder-option", "window=3"), ["--builder-option", "'window=3'"]),
    "builder_option_unscored_builder": lambda ws: (
        _score(ws, "--builder-option", "category.top_k=3"), ["--builder-option", "'category'"]),
    "builder_option_unknown_key": lambda ws: (
        _score(ws, "--builder-option", "random.colour=3"), ["--builder-option", "'colour'"]),
    "embeddings_missing": lambda ws: (_score(ws, "--embeddings", ws.tmp / "x.safetensors"), ["x.safetensors", "not found"]),
    "embeddings_name_twice": lambda ws: (
        _score(ws, "--embeddings", f"a={ws.embeddings()}", "--embeddings", f"a={ws.embeddings(name='y.safetensors')}"),
        ["--embeddings", "'a'"]),
    "embeddings_format": lambda ws: (_score(ws, "--embeddings", "a="), ["--embeddings", "'a='"]),
    "embeddings_ids_null": lambda ws: (_score(ws, "--embeddings", ws.embeddings(ids=None)), ["emb.safetensors", "'ids'", "None"]),
    "embeddings_manifest_list": lambda ws: (
        _score(ws, "--embeddings", ws.embeddings(manifest=["x"])), ["emb.safetensors", "'manifest'", "['x']"]),
    "embeddings_trained_until_float": lambda ws: (
        _score(ws, "--embeddings", ws.embeddings(manifest={"trained_until": 17.5})), ["emb.safetensors", "'trained_until'", "17.5"]),
    "table_trained_on_the_evaluation_window": lambda ws: (
        _score(ws, "--embeddings", _good_table(ws, trained_until=4_000_000_000)),
        ["table", "'trained_until'", "4000000000"]),
    "mode_bad": lambda ws: (_score(ws, "--mode", "exact"), ["--mode", "'exact'"]),
    "user_builder_without_pairs": lambda ws: (
        ["lis", "score", "--data", ws.world, "--builder", "user", "--out", ws.tmp / "r.json"], ["user", "--pairs-file"]),
    "data_missing": lambda ws: (_score(ws, data=ws.tmp / "gone"), ["gone", "not found"]),
}


def _md_named_log(ws) -> Path:
    """``--out DATA/log.json``: its markdown sibling would be DATA/log.md -- make that an input too."""
    (ws.data / "log.parquet").rename(ws.data / "log.md.parquet")
    os.symlink(ws.data / "log.md.parquet", ws.data / "log.parquet")
    os.symlink(ws.data / "log.md.parquet", ws.data / "log.md")
    return ws.data / "log.json"


def _png_dir(ws) -> Path:
    (ws.tmp / "report.png").mkdir()
    return ws.tmp / "report.json"


# ----------------------------------------------------------------------------- synth
SYNTH = {
    "out_is_a_file": lambda ws: (["synth", "--preset", "tiny", "--out", ws.table("f.csv", pd.DataFrame({"a": [1]}))],
                                 ["f.csv", "not a directory"]),
    "out_foreign_directory": lambda ws: (["synth", "--preset", "tiny", "--out", _busy(ws)], ["busy", "synth.json"]),
    "preset_unknown": lambda ws: (["synth", "--preset", "huge", "--out", ws.tmp / "w"], ["--preset", "'huge'"]),
    "seed_text": lambda ws: (["synth", "--seed", "one", "--out", ws.tmp / "w"], ["--seed", "'one'"]),
    "no_command": lambda ws: (["nope"], ["'nope'"]),
}

CASES = {f"{group}-{name}": build for group, table in
         (("validate", VALIDATE), ("import", IMPORT), ("pairs", PAIRS), ("score", SCORE), ("synth", SYNTH))
         for name, build in table.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, world, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path / "ws", world)
    ws.tmp.mkdir()
    argv, words = CASES[case](ws)
    if case == "score-builder_twice":
        argv += ["--builder", "random"]
    expect_bad_input(main, argv, capsys, words, watch=[ws.tmp] + ([world] if case.startswith("score") else []))


def test_the_suite_covers_every_evaluator_command():
    groups = {case.split("-")[0] for case in CASES}
    assert groups == {"validate", "import", "pairs", "score", "synth"} and len(CASES) >= 100
