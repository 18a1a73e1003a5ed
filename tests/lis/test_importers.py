"""lis/importers.py: RecBole and CSV imports give a valid data dir, or nothing at all."""
from __future__ import annotations

import pandas as pd
import pytest

from lis.datadir import load_datadir
from lis.errors import ConfigError, DataError
from lis.importers import import_interactions_csv, import_recbole, read_recbole

INTER = """\
user_id:token\titem_id:token\trating:float\ttimestamp:float
196\t242\t3\t881250949
186\t302\t3\t891717742
22\t377\t1\t878887116
244\t51\t2\t880606923
166\t346\t1\t886397596
298\t474\t4\t884182806
196\t999\t5\t881250950
"""

ITEM = """\
item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
242\tKolya\t1996\tComedy
302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller
377\tHeavyweights\t1994\tChildren Comedy
51\tLegends of the Fall\t1994\tDrama Romance War Western
346\tJackie Brown\t1997\tCrime Drama
474\tDr. Strangelove "or" How I Learned\t1963\tSci-Fi War
"""


def _files(tmp_path, inter=INTER, item=ITEM):
    (tmp_path / "ml.inter").write_text(inter)
    (tmp_path / "ml.item").write_text(item)
    return tmp_path / "ml.inter", tmp_path / "ml.item"


def _assert_nothing_written(out):
    assert not out.exists(), "a failed import must not leave an output directory"
    assert not out.with_name(out.name + ".tmp").exists(), "a failed import must not leave a temporary"


def test_recbole_import_sorts_by_time_labels_by_rating_and_drops_unknown_items(tmp_path):
    inter, item = _files(tmp_path)
    summary = import_recbole(inter, item, tmp_path / "out")
    loaded = load_datadir(tmp_path / "out")
    log, catalogue = loaded.log, loaded.catalogue
    assert log["timestamp"].is_monotonic_increasing
    assert log["item_id"].tolist() == ["377", "51", "242", "474", "346", "302"]
    assert log.set_index("item_id")["label"].to_dict() == {"377": 0, "51": 0, "474": 1, "242": 0, "346": 0, "302": 0}
    assert summary["dropped_rows"] == 1 and summary["impressions"] == 6
    assert summary["label_rule"] == "rating >= 4"
    by_id = catalogue.set_index("item_id")
    assert by_id.loc["474", "text"] == 'Dr. Strangelove "or" How I Learned'  # quotes kept; year is a token, not text
    assert by_id.loc["302", "category"] == "Crime"  # first token of a token_seq category
    assert "rating" in log.columns


def test_recbole_label_field_wins_over_rating(tmp_path):
    inter = "user_id:token\titem_id:token\trating:float\tlabel:float\ttimestamp:float\nu\t242\t5\t0\t10\nu\t302\t1\t1\t20\n"
    summary = import_recbole(*_files(tmp_path, inter=inter), tmp_path / "out")
    assert load_datadir(tmp_path / "out").log["label"].tolist() == [0, 1]
    assert summary["label_rule"] == "column 'label' (0/1)"


def test_recbole_without_rating_or_label_makes_every_interaction_positive(tmp_path):
    inter = "user_id:token\titem_id:token\ttimestamp:float\nu\t242\t10\nv\t302\t20\n"
    summary = import_recbole(*_files(tmp_path, inter=inter), tmp_path / "out", rating_threshold=2)
    assert summary["positive_rate"] == 1.0 and "every interaction is a positive" in summary["label_rule"]


def test_recbole_text_fields_and_threshold_can_be_chosen(tmp_path):
    import_recbole(*_files(tmp_path), tmp_path / "out", text_fields=["movie_title", "release_year"], rating_threshold=3)
    loaded = load_datadir(tmp_path / "out")
    assert loaded.catalogue.set_index("item_id").loc["242", "text"] == "Kolya. 1996"
    assert int(loaded.log["label"].sum()) == 3


def test_recbole_images_are_copied_into_the_output(tmp_path, png):
    png(tmp_path / "posters" / "kolya.png")
    png(tmp_path / "posters" / "la.png")
    item = "item_id:token\ttitle:token\tposter:token\n242\tKolya\tposters/kolya.png\n302\tLA\tposters/la.png\n"
    summary = import_recbole(*_files(tmp_path, item=item), tmp_path / "out", image_field="poster")
    loaded = load_datadir(tmp_path / "out")
    assert loaded.image_path("242") == tmp_path / "out" / "images" / "242.png"
    assert loaded.load_image("302").size == (4, 4)
    assert summary["image_coverage"] == 1.0 and summary["dropped_rows"] == 5


@pytest.mark.parametrize("inter, item, fragments", [
    ("user_id\titem_id:token\ttimestamp:float\nu\t242\t1\n", ITEM, ["ml.inter", "header field 'user_id'", "name:type"]),
    ("user_id:token\titem_id:token\ttimestamp:float\nu\t242\tnoon\n", ITEM, ["ml.inter", "'timestamp'", "row 0 holds 'noon'"]),
    ("user_id:token\titem_id:token\trating:float\tts:float\nu\t242\t5\t1\n", ITEM, ["ml.inter", "missing column 'timestamp'", "time_field"]),
    ("user_id:token\titem_id:token\tlabel:float\ttimestamp:float\nu\t242\t1\t5\nu\t302\t2\t6\n", ITEM,
     ["ml.inter", "'label'", "row 1 holds 2.0", "(user 'u', item '302')"]),
    ("user_id:token\titem_id:token\ttimestamp:float\nu\tnope\t5\n", ITEM, ["ml.inter", "none of its items", "'nope'"]),
    (INTER, "item_id:token\ttitle:token\tposter:token\n242\tKolya\tmissing.png\n", ["ml.item", "'image'", "'missing.png'"]),
])
def test_bad_recbole_input_is_named_and_writes_nothing(tmp_path, inter, item, fragments):
    files = _files(tmp_path, inter=inter, item=item)
    with pytest.raises(DataError) as error:
        import_recbole(*files, tmp_path / "out", image_field="poster" if "poster" in item else None)
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} not in {error.value}"
    _assert_nothing_written(tmp_path / "out")


def test_corrupt_source_image_fails_before_anything_is_written(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    item = "item_id:token\ttitle:token\tposter:token\n242\tKolya\tbad.png\n"
    with pytest.raises(DataError, match=r"ml\.item: column 'image' of row 0 \(item '242'\) holds 'bad\.png', which cannot be read"):
        import_recbole(*_files(tmp_path, item=item), tmp_path / "out", image_field="poster")
    _assert_nothing_written(tmp_path / "out")


def test_a_non_empty_output_is_replaced_only_when_asked(tmp_path):
    files = _files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="output directory is not empty"):
        import_recbole(*files, out)
    assert (out / "keep.txt").read_text() == "precious"
    import_recbole(*files, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["catalogue.parquet", "log.parquet"]


def test_read_recbole_keeps_text_and_parses_floats(tmp_path):
    frame, types = read_recbole(_files(tmp_path)[0])
    assert types == {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    assert frame["rating"].dtype == "float64" and frame["user_id"].iat[0] == "196"


# ----------------------------------------------------------------------------- plain CSV
def _csv_world(tmp_path, png):
    for name in ("a", "b", "c"):
        png(tmp_path / "src" / "pics" / f"{name}.png")
    pd.DataFrame({
        "uid": ["007", "008", "007", "009"],
        "sku": ["a", "b", "c", "a"],
        "when": ["2024-03-02T10:00:00Z", "2024-03-01T09:00:00Z", "2024-03-02T10:00:00Z", "2024-03-03T00:00:00+02:00"],
        "clicked": [1, 0, 1, 0],
    }).to_csv(tmp_path / "events.csv", index=False)
    pd.DataFrame({
        "sku": ["a", "b", "c"], "title": ["Apple", "Banana", "Cherry"],
        "picture": ["pics/a.png", "pics/b.png", "pics/c.png"], "aisle": ["fruit", "fruit", "berry"],
    }).to_csv(tmp_path / "src" / "items.csv", index=False)
    return tmp_path / "events.csv", tmp_path / "src" / "items.csv"


def test_csv_import_maps_columns_sorts_stably_and_copies_images(tmp_path, png):
    events, items = _csv_world(tmp_path, png)
    summary = import_interactions_csv(
        events, tmp_path / "out", user_col="uid", item_col="sku", time_col="when", label_col="clicked",
        catalogue_csv=items, text_col="title", image_col="picture", category_col="aisle",
    )
    loaded = load_datadir(tmp_path / "out")
    assert loaded.log["user_id"].tolist() == ["008", "007", "007", "009"]  # leading zeros kept
    assert loaded.log["item_id"].tolist() == ["b", "a", "c", "a"]  # equal times keep file order
    assert loaded.log["timestamp"].tolist()[-1] == pd.Timestamp("2024-03-02T22:00:00Z").timestamp()
    assert loaded.catalogue.set_index("item_id").loc["c", "text"] == "Cherry"
    assert loaded.load_image("b").size == (4, 4)
    assert summary["categories"] == 2 and summary["label_rule"] == "column 'clicked' (0/1)"


def test_csv_import_without_catalogue_takes_item_text_from_the_interactions(tmp_path):
    pd.DataFrame({"user_id": ["u", "v"], "item_id": [1, 2], "timestamp": [5, 6], "text": ["one", "two"]}).to_csv(
        tmp_path / "events.csv", index=False)
    summary = import_interactions_csv(tmp_path / "events.csv", tmp_path / "out")
    loaded = load_datadir(tmp_path / "out")
    assert loaded.catalogue["text"].tolist() == ["one", "two"]
    assert summary["positive_rate"] == 1.0


def test_csv_import_turns_ratings_into_labels(tmp_path):
    pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3], "stars": [5, 3.5, 4]}).to_parquet(
        tmp_path / "events.parquet")
    import_interactions_csv(tmp_path / "events.parquet", tmp_path / "out", rating_col="stars")
    assert load_datadir(tmp_path / "out").log["label"].tolist() == [1, 0, 1]


def test_csv_import_refuses_label_and_rating_together(tmp_path):
    pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1], "label": [1], "stars": [5]}).to_csv(
        tmp_path / "events.csv", index=False)
    with pytest.raises(ConfigError, match="give label_col .* or rating_col .*, not both"):
        import_interactions_csv(tmp_path / "events.csv", tmp_path / "out", label_col="label", rating_col="stars")
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change, options, fragments", [
    ({"clicked": [1, 0, 5, 0]}, {"label_col": "clicked"}, ["events.csv", "'label'", "row 2 holds 5", "(user '007', item 'c')", "label <- 'clicked'"]),
    ({"when": ["2024-03-02", "2024-03-01", "someday", "2024-03-03"]}, {"time_col": "when"}, ["events.csv", "'when'", "row 2 holds 'someday'"]),
    ({}, {"time_col": "time"}, ["events.csv", "missing column 'time'", "time_col", "found: uid, sku, when, clicked"]),
    ({}, {"time_col": "when", "image_col": "photo"}, ["items.csv", "missing column 'photo'", "image_col"]),
])
def test_bad_csv_input_is_named_and_writes_nothing(tmp_path, png, change, options, fragments):
    events, items = _csv_world(tmp_path, png)
    frame = pd.read_csv(events, dtype={"uid": str})
    for column, values in change.items():
        frame[column] = values
    frame.to_csv(events, index=False)
    kwargs = dict(user_col="uid", item_col="sku", time_col="when", catalogue_csv=items, text_col="title") | options
    with pytest.raises(DataError) as error:
        import_interactions_csv(events, tmp_path / "out", **kwargs)
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} not in {error.value}"
    _assert_nothing_written(tmp_path / "out")


def test_image_urls_are_refused(tmp_path):
    pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1], "image": ["https://x.org/a.png"]}).to_csv(
        tmp_path / "events.csv", index=False)
    with pytest.raises(DataError, match=r"events\.csv: column 'image' of row 0 \(item 'a'\) holds the URL 'https://x\.org/a\.png'"):
        import_interactions_csv(tmp_path / "events.csv", tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")
