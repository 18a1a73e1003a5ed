"""`lis-align data ...`: a summary for good data; for bad data one line naming file, column, value, exit 2."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lis.cli import build_parser, run


def cli(argv) -> int:
    # Only the data command: the test must not depend on other commands being importable.
    return run(build_parser(("lis.commands.data",)), argv)


def test_validate_prints_a_summary_table(datadir, capsys):
    assert cli(["data", "validate", str(datadir)]) == 0
    out = capsys.readouterr().out
    assert f"{datadir}: OK" in out
    assert "impressions" in out and "positive_rate" in out and "2023-11-14T22:13:20Z .. 2023-11-15T05:13:20Z" in out


def test_validate_json_prints_the_summary_dict(datadir, capsys):
    assert cli(["data", "validate", str(datadir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 4 and summary["image_coverage"] == 1.0


def test_validate_checks_embeddings_and_pairs_when_given(datadir, tmp_path, capsys):
    from lis.embeddings import EmbeddingTable, make_manifest, save_embeddings

    save_embeddings(tmp_path / "emb.safetensors",
                    EmbeddingTable(["i0", "i1"], np.ones((2, 3)), make_manifest(3, "random")))
    pd.DataFrame({"anchor_id": ["i0"], "positive_id": ["i1"], "weight": [2.0]}).to_parquet(tmp_path / "pairs.parquet")
    argv = ["data", "validate", str(datadir), "--json", "--embeddings", str(tmp_path / "emb.safetensors"),
            "--pairs", str(tmp_path / "pairs.parquet")]
    assert cli(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embeddings"]["catalogue_coverage"] == 0.5 and summary["embeddings"]["dim"] == 3
    assert summary["pairs"]["pairs"] == 1


def test_import_recbole_and_csv_from_the_command_line(tmp_path, capsys):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\nu\ta\t5\t1\nu\tb\t2\t2\n")
    (tmp_path / "x.item").write_text("item_id:token\ttitle:token_seq\na\tAlpha\nb\tBeta\n")
    assert cli(["data", "import", "recbole", str(tmp_path / "x.inter"), str(tmp_path / "x.item"),
                "--out", str(tmp_path / "rb"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["positive_rate"] == 0.5
    pd.DataFrame({"who": ["u", "v"], "item_id": ["a", "b"], "timestamp": [1, 2], "label": [1, 0]}).to_csv(
        tmp_path / "ev.csv", index=False)
    assert cli(["data", "import", "csv", str(tmp_path / "ev.csv"), "--user-col", "who", "--out", str(tmp_path / "plain")]) == 0
    assert "imported into" in capsys.readouterr().out
    assert cli(["data", "validate", str(tmp_path / "plain")]) == 0


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "validate", "--help"], ["data", "import", "recbole", "--help"],
                                  ["data", "import", "csv", "--help"]])
def test_help_texts_exist(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input
def _swap_rows(frame, a, b):
    frame = frame.copy()
    frame.iloc[[a, b]] = frame.iloc[[b, a]].to_numpy()
    return frame


def _log_edit(**columns):
    def edit(catalogue, log, root):
        for column, values in columns.items():
            log[column] = values
        return catalogue, log
    return edit


def _catalogue_edit(**columns):
    def edit(catalogue, log, root):
        for column, values in columns.items():
            catalogue[column] = values
        return catalogue, log
    return edit


def _corrupt_image(catalogue, log, root):
    (root / "images" / "i2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return catalogue, log


def _write_embeddings(tensor, ids):
    def extra(root, tmp_path):
        from safetensors.numpy import save_file

        path = tmp_path / "emb.safetensors"
        save_file({"embeddings": tensor}, str(path), metadata={"ids": json.dumps(ids), "manifest": "{}"})
        return ["--embeddings", str(path)]
    return extra


def _write_pairs(frame):
    def extra(root, tmp_path):
        frame.to_parquet(tmp_path / "pairs.parquet")
        return ["--pairs", str(tmp_path / "pairs.parquet")]
    return extra


def _corrupt_log_file(catalogue, log, root):
    (root / "log.parquet").write_bytes(b"PAR1 truncated")
    return catalogue, log


T0 = 1_700_000_000
NAN_ROW = np.ones((4, 3), dtype=np.float32)
NAN_ROW[2, 1] = np.nan

# case id -> (edit of the valid tables, extra CLI args, fragments: file, column, bad value (and where)).
BAD_INPUTS = {
    "missing column": (lambda c, l, r: (c, l.drop(columns="label")), None,
                       ["log.parquet", "missing column 'label'", "found: user_id, item_id, timestamp"]),
    "missing catalogue column": (lambda c, l, r: (c.drop(columns="text"), l), None,
                                 ["catalogue.parquet", "missing column 'text'", "found: item_id, image, category"]),
    "wrong type": (_log_edit(base_logit=["0.1"] * 7 + ["high"]), None,
                   ["log.parquet", "'base_logit'", "must hold numbers", "row 7 holds 'high'"]),
    "label of wrong type": (_log_edit(label=["1", "0", "yes", "1", "0", "1", "0", "1"]), None,
                            ["log.parquet", "'label'", "row 2 holds 'yes'"]),
    "duplicate item ids": (_catalogue_edit(item_id=["i0", "i1", "i2", "i1"]), None,
                           ["catalogue.parquet", "'item_id'", "must be unique", "'i1' appears at rows 1 and 3"]),
    "unknown items": (_log_edit(item_id=["i0", "i1", "i2", "ghost", "i0", "i1", "i2", "i3"]), None,
                      ["log.parquet", "'item_id'", "row 3 holds 'ghost'", "(user 'u1', item 'ghost')"]),
    "unsorted timestamps": (lambda c, l, r: (c, _swap_rows(l, 4, 5)), None,
                            ["log.parquet", "'timestamp'", "non-decreasing", f"row 5 holds {T0 + 4 * 3600}"]),
    "unparsable timestamps": (_log_edit(timestamp=["2024-01-01T00:00:00Z"] * 6 + ["tomorrow-ish", "2024-01-02"]), None,
                              ["log.parquet", "'timestamp'", "row 6 holds 'tomorrow-ish'"]),
    "label not 0/1": (_log_edit(label=[0, 1, 0, 1, 0, 1, 3, 1]), None,
                      ["log.parquet", "'label'", "must hold 0 or 1", "row 6 holds 3", "(user 'u0', item 'i2')"]),
    "image path missing": (_catalogue_edit(image=["images/i0.png", "images/nope.png", "images/i2.png", None]), None,
                           ["catalogue.parquet", "'image'", "row 1 (item 'i1')", "'images/nope.png'", "no such file"]),
    "image path escaping": (_catalogue_edit(image=["images/i0.png", "../../secret.png", None, None]), None,
                            ["catalogue.parquet", "'image'", "row 1 (item 'i1')", "'../../secret.png'", "inside the data directory"]),
    "absolute image path outside": (_catalogue_edit(image=["/etc/hostname", None, None, None]), None,
                                    ["catalogue.parquet", "'image'", "row 0 (item 'i0')", "'/etc/hostname'", "outside"]),
    "corrupt image file": (_corrupt_image, None,
                           ["catalogue.parquet", "'image'", "row 2 (item 'i2')", "'images/i2.png'", "cannot be read as an image"]),
    "corrupt image bytes": (_catalogue_edit(image=[b"not an image", None, None, None]), None,
                            ["catalogue.parquet", "'image'", "row 0 (item 'i0')", "12 bytes", "not a known image format"]),
    "empty log": (lambda c, l, r: (c, l.iloc[:0]), None, ["log.parquet", "the log is empty"]),
    "corrupt log file": (_corrupt_log_file, None, ["log.parquet", "not a readable Parquet log table"]),
    "embeddings with wrong shape": (None, _write_embeddings(np.ones(4, dtype=np.float32), ["i0", "i1", "i2", "i3"]),
                                    ["emb.safetensors", "'embeddings'", "2-D", "got shape (4,)"]),
    "embeddings with NaN": (None, _write_embeddings(NAN_ROW, ["i0", "i1", "i2", "i3"]),
                            ["emb.safetensors", "'embeddings'", "must be finite", "row 2 (item 'i2') holds nan"]),
    "embeddings id count": (None, _write_embeddings(np.ones((4, 3), dtype=np.float32), ["i0", "i1"]),
                            ["emb.safetensors", "'ids'", "lists 2 ids", "4 rows"]),
    "embeddings for other items": (None, _write_embeddings(np.ones((2, 3), dtype=np.float32), ["x0", "x1"]),
                                   ["emb.safetensors", "'ids'", "shares no id with the catalogue", "'x0'"]),
    "pairs with unknown items": (None, _write_pairs(pd.DataFrame({"anchor_id": ["i0"], "positive_id": ["zz"], "weight": [1.0]})),
                                 ["pairs.parquet", "'positive_id'", "row 0 holds 'zz'"]),
    "pairs with bad weight": (None, _write_pairs(pd.DataFrame({"anchor_id": ["i0", "i1"], "positive_id": ["i1", "i2"],
                                                               "weight": [1.0, -1.0]})),
                              ["pairs.parquet", "'weight'", "must be > 0", "row 1 holds -1.0"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_file_column_and_value_with_exit_2(case, tables, make_datadir, tmp_path, capsys):
    edit, extra, fragments = BAD_INPUTS[case]
    catalogue, log = tables
    root = make_datadir()
    if edit is not None:
        catalogue, log = edit(catalogue, log, root)
        catalogue.to_parquet(root / "catalogue.parquet", index=False)
        if case != "corrupt log file":
            log.to_parquet(root / "log.parquet", index=False)
    argv = ["data", "validate", str(root)] + (extra(root, tmp_path) if extra else [])
    assert cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = captured.err.strip()
    assert message.startswith("lis-align: ") and "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_failed_cli_import_leaves_no_output(tmp_path, capsys):
    pd.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "b"], "timestamp": [2, 1], "label": [1, 7]}).to_csv(
        tmp_path / "ev.csv", index=False)
    assert cli(["data", "import", "csv", str(tmp_path / "ev.csv"), "--out", str(tmp_path / "out")]) == 2
    assert "ev.csv: column 'label' must hold 0 or 1; row 1 holds 7" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.csv"]
