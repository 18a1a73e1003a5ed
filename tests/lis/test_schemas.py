"""lis/schemas.py: canonical dtypes out, and one precise message per kind of bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lis.errors import DataError
from lis.schemas import (load_catalogue, load_log, load_pairs, to_unix_seconds, validate_catalogue,
                         validate_log, validate_pairs)

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def test_validated_log_has_canonical_dtypes(tables):
    _, log = tables
    log["user_id"] = np.arange(8) % 2  # integer ids become text
    log["label"] = log["label"].astype(bool)
    log["base_logit"] = np.linspace(-1, 1, 8).astype(np.float32)
    log["session_id"] = ["s1"] * 8
    out = validate_log(log, "log.parquet", item_ids=["i0", "i1", "i2", "i3"])
    assert out["user_id"].tolist()[:2] == ["0", "1"]
    assert pd.api.types.is_string_dtype(out["user_id"]) and pd.api.types.is_string_dtype(out["item_id"])
    assert out["timestamp"].dtype == np.int64
    assert out["label"].dtype == np.int8
    assert out["base_logit"].dtype == np.float64
    assert log["user_id"].dtype == np.int64, "the caller's frame must not be modified"


@pytest.mark.parametrize("form", ["int", "float", "datetime", "datetime-tz", "iso", "iso-offset", "numeric-text"])
def test_timestamps_in_every_accepted_form_become_unix_seconds(tables, form):
    _, log = tables
    seconds = log["timestamp"].to_numpy()
    moments = pd.to_datetime(seconds, unit="s")
    log["timestamp"] = {
        "int": seconds,
        "float": seconds + 0.75,  # floored
        "datetime": moments,
        "datetime-tz": moments.tz_localize("UTC").tz_convert("Europe/Paris"),
        "iso": moments.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "iso-offset": moments.tz_localize("UTC").tz_convert("Asia/Tokyo").strftime("%Y-%m-%dT%H:%M:%S%z"),
        "numeric-text": [str(s) for s in seconds],
    }[form]
    out = validate_log(log, "log.parquet")
    np.testing.assert_array_equal(out["timestamp"].to_numpy(), seconds)


def test_integral_float_ids_lose_their_decimal_point():
    frame = pd.DataFrame({"item_id": [1.0, 2.0], "text": ["a", None]})
    out = validate_catalogue(frame, "catalogue.csv")
    assert out["item_id"].tolist() == ["1", "2"]
    assert out["text"].tolist() == ["a", ""]


def test_catalogue_image_accepts_paths_bytes_nulls_and_datasets_dicts():
    frame = pd.DataFrame({
        "item_id": ["a", "b", "c", "d"], "text": ["x"] * 4,
        "image": ["images/a.png", b"\x89PNG", None, {"bytes": None, "path": "images/d.png"}],
    })
    out = validate_catalogue(frame, "catalogue.parquet")
    assert out["image"].tolist() == ["images/a.png", b"\x89PNG", None, "images/d.png"]


def test_pairs_get_weight_one_when_the_column_is_absent():
    out = validate_pairs(pd.DataFrame({"anchor_id": ["a"], "positive_id": ["b"]}), "pairs.parquet", ["a", "b"])
    assert out["weight"].tolist() == [1.0] and out["weight"].dtype == np.float64


def test_loaders_read_files_and_name_them(tmp_path, tables):
    catalogue, log = tables
    catalogue.to_csv(tmp_path / "catalogue.csv", index=False)
    log.to_json(tmp_path / "log.jsonl", orient="records", lines=True)
    pd.DataFrame({"anchor_id": ["i0"], "positive_id": ["i9"], "weight": [1.0]}).to_parquet(tmp_path / "pairs.parquet")
    items = load_catalogue(tmp_path / "catalogue.csv")["item_id"]
    assert len(load_log(tmp_path / "log.jsonl", items)) == 8
    with pytest.raises(DataError, match=r"^pairs\.parquet: column 'positive_id' must name items of the catalogue; row 0 holds 'i9'"):
        load_pairs(tmp_path / "pairs.parquet", items)


def _log(**columns) -> pd.DataFrame:
    base = {"user_id": ["u1", "u2", "u3"], "item_id": ["a", "b", "c"], "timestamp": [T0, T0 + 1, T0 + 2], "label": [0, 1, 0]}
    base.update(columns)
    return pd.DataFrame(base)


# Each case: (frame builder, validator kwargs, fragments the message must hold: file, column, bad value, place).
LOG_CASES = {
    "missing column": (lambda: _log().drop(columns="label"), {}, ["'label'", "found: user_id, item_id, timestamp"]),
    "null user": (lambda: _log(user_id=["u1", None, "u3"]), {}, ["'user_id'", "row 1 is empty"]),
    "blank item": (lambda: _log(item_id=["a", "", "c"]), {}, ["'item_id'", "row 1 holds ''"]),
    "list id": (lambda: _log(item_id=["a", ["x"], "c"]), {}, ["'item_id'", "row 1 holds ['x'] (list)"]),
    "unknown item": (lambda: _log(item_id=["a", "zz", "zz"]), {"item_ids": ["a", "b", "c"]},
                     ["'item_id'", "row 1 holds 'zz'", "(user 'u2', item 'zz')", "2 such rows"]),
    "unsorted": (lambda: _log(timestamp=[T0, T0 + 5, T0 + 2]), {},
                 ["'timestamp'", "non-decreasing", f"row 2 holds {T0 + 2}", "2023-11-14T22:13:22Z", "row 1's"]),
    "unparsable time": (lambda: _log(timestamp=["2024-01-01", "yesterday", "2024-01-03"]), {},
                        ["'timestamp'", "row 1 holds 'yesterday'"]),
    "null time": (lambda: _log(timestamp=[T0, None, T0]), {}, ["'timestamp'", "row 1 is empty"]),
    "infinite time": (lambda: _log(timestamp=[T0, np.inf, np.inf]), {}, ["'timestamp'", "row 1 holds inf"]),
    "milliseconds": (lambda: _log(timestamp=[T0 * 1000] * 3), {}, ["'timestamp'", f"row 0 holds {T0 * 1000}", "milliseconds"]),
    "boolean time": (lambda: _log(timestamp=[True, True, True]), {}, ["'timestamp'", "booleans", "row 0 holds True"]),
    "label 3": (lambda: _log(label=[0, 1, 3]), {}, ["'label'", "must hold 0 or 1", "row 2 holds 3", "(user 'u3', item 'c')"]),
    "label text": (lambda: _log(label=["1", "yes", "0"]), {}, ["'label'", "row 1 holds 'yes'"]),
    "label nan": (lambda: _log(label=[0.0, np.nan, 1.0]), {}, ["'label'", "row 1 holds nan"]),
    "base_logit text": (lambda: _log(base_logit=["0.5", "high", "1"]), {}, ["'base_logit'", "must hold numbers", "row 1 holds 'high'"]),
    "base_logit nan": (lambda: _log(base_logit=[0.5, 1.0, np.nan]), {}, ["'base_logit'", "must be finite", "row 2 holds nan"]),
    "empty": (lambda: _log().iloc[:0], {}, ["the log is empty"]),
}


@pytest.mark.parametrize("case", list(LOG_CASES))
def test_bad_logs_get_a_message_naming_file_column_and_value(case):
    build, kwargs, fragments = LOG_CASES[case]
    with pytest.raises(DataError) as error:
        validate_log(build(), "log.parquet", **kwargs)
    message = str(error.value)
    assert message.startswith("log.parquet: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


CATALOGUE_CASES = {
    "missing text": (pd.DataFrame({"item_id": ["a"]}), ["missing column 'text'", "found: item_id"]),
    "duplicate ids": (pd.DataFrame({"item_id": ["a", "b", "c", "b"], "text": list("wxyz")}),
                      ["'item_id'", "must be unique", "'b' appears at rows 1 and 3"]),
    "image of wrong type": (pd.DataFrame({"item_id": ["a", "b"], "text": ["x", "y"], "image": ["p.png", 3.5]}),
                            ["'image'", "row 1 holds 3.5 (float)", "(item 'b')"]),
    "bad created_at": (pd.DataFrame({"item_id": ["a", "b"], "text": ["x", "y"], "created_at": ["2024-01-01", "soon"]}),
                       ["'created_at'", "row 1 holds 'soon'", "(item 'b')"]),
    "empty": (pd.DataFrame({"item_id": [], "text": []}), ["the catalogue is empty"]),
}


@pytest.mark.parametrize("case", list(CATALOGUE_CASES))
def test_bad_catalogues_get_a_message_naming_file_column_and_value(case):
    frame, fragments = CATALOGUE_CASES[case]
    with pytest.raises(DataError) as error:
        validate_catalogue(frame, "catalogue.parquet")
    message = str(error.value)
    assert message.startswith("catalogue.parquet: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("weights, fragments", [
    ([1.0, 0.0], ["'weight'", "must be > 0", "row 1 holds 0.0", "(pair 'b' -> 'c')"]),
    ([1.0, -2.0], ["'weight'", "row 1 holds -2.0"]),
    ([np.nan, 1.0], ["'weight'", "must be finite", "row 0 holds nan", "(pair 'a' -> 'b')"]),
    ([np.inf, 1.0], ["'weight'", "row 0 holds inf"]),
    (["1", "heavy"], ["'weight'", "must hold numbers", "row 1 holds 'heavy'"]),
])
def test_bad_pair_weights_are_named(weights, fragments):
    frame = pd.DataFrame({"anchor_id": ["a", "b"], "positive_id": ["b", "c"], "weight": weights})
    with pytest.raises(DataError) as error:
        validate_pairs(frame, "pairs.parquet", ["a", "b", "c"])
    message = str(error.value)
    assert message.startswith("pairs.parquet: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_unsorted_log_is_accepted_when_order_is_not_checked():
    out = validate_log(_log(timestamp=[T0 + 9, T0, T0 + 5]), "import.csv", check_order=False)
    assert out["timestamp"].tolist() == [T0 + 9, T0, T0 + 5]


def test_to_unix_seconds_names_its_column():
    with pytest.raises(DataError, match=r"^events\.csv: column 'when' .* row 1 holds 'later'"):
        to_unix_seconds(pd.Series(["2024-01-01", "later"]), "events.csv", "when")


def test_a_million_row_log_validates(tables):
    # Correctness at scale (vectorised paths, no per-row Python); speed itself lives in the report.
    rng = np.random.default_rng(0)
    n = 1_000_000
    log = pd.DataFrame({
        "user_id": rng.integers(0, 50_000, n).astype(str), "item_id": "i" + pd.Series(rng.integers(0, 4, n)).astype(str),
        "timestamp": np.sort(rng.integers(T0, T0 + 10**7, n)), "label": rng.integers(0, 2, n),
    })
    out = validate_log(log, "log.parquet", item_ids=["i0", "i1", "i2", "i3"])
    assert len(out) == n and out["label"].dtype == np.int8
