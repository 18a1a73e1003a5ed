"""``lis-align data``: check a data directory, or import RecBole / CSV data into one."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VALIDATE_HELP = """\
Load DIR (catalogue.parquet, log.parquet, images/) and check everything: columns, types,
unique item ids, log items known to the catalogue, timestamps parsable and in time order,
labels 0/1, image paths inside DIR and decodable. Prints a summary; any problem is one line
naming the file, the column and a bad value, with exit status 2."""

IMPORT_HELP = """\
Convert interaction data into a lis-align data directory (catalogue.parquet, log.parquet,
images/). Labels: a label column (0/1) if present, else rating >= --rating-threshold, else
every interaction counts as a positive. Log rows whose item is not in the catalogue are
dropped and counted. Nothing is written unless the whole import succeeds."""


def register(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="check a data directory or import data into one",
        description="Check a lis-align data directory, or import RecBole / CSV interaction data into one.",
    )
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    validate = actions.add_parser(
        "validate", help="check a data directory and print its summary", description=VALIDATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("dir", metavar="DIR", help="the data directory")
    validate.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    validate.add_argument("--no-images", action="store_true",
                          help="skip opening image files (paths are still checked to stay inside DIR)")
    validate.add_argument("--embeddings", metavar="FILE",
                          help="also check an embeddings .safetensors file and its coverage of the catalogue")
    validate.add_argument("--pairs", metavar="FILE", help="also check a pairs table against the catalogue")
    validate.set_defaults(handler=run_validate)

    imports = actions.add_parser(
        "import", help="import RecBole or CSV data", description=IMPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources = imports.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True

    recbole = sources.add_parser(
        "recbole", help="RecBole atomic files (.inter + .item)",
        description=IMPORT_HELP + "\n\nRecBole atomic files are tab-separated with typed headers such as "
        "'user_id:token  item_id:token  rating:float  timestamp:float'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recbole.add_argument("inter", metavar="INTER", help="the .inter file")
    recbole.add_argument("item", metavar="ITEM", help="the .item file")
    _common_import_args(recbole)
    recbole.add_argument("--user-field", default="user_id", help="user id field (default: %(default)s)")
    recbole.add_argument("--item-field", default="item_id", help="item id field (default: %(default)s)")
    recbole.add_argument("--time-field", default="timestamp", help="time field (default: %(default)s)")
    recbole.add_argument("--label-field", default="label", help="0/1 label field, used when present (default: %(default)s)")
    recbole.add_argument("--rating-field", default="rating", help="rating field, used when present (default: %(default)s)")
    recbole.add_argument("--text-fields", metavar="A,B",
                         help="item fields joined into the text (default: the title and other token_seq fields)")
    recbole.add_argument("--category-field", help="item field giving the category (default: categories/genre/class if present)")
    recbole.add_argument("--image-field", help="item field holding image paths (relative to --images-root)")
    recbole.set_defaults(handler=run_import_recbole)

    plain = sources.add_parser(
        "csv", help="a plain interactions table (CSV, Parquet or JSON lines)",
        description=IMPORT_HELP + "\n\nItem text/image/category come from --catalogue when given, else from "
        "the interactions table itself (first row of each item).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plain.add_argument("interactions", metavar="INTERACTIONS", help="the interactions table")
    _common_import_args(plain)
    plain.add_argument("--catalogue", metavar="FILE", help="a table of item attributes")
    plain.add_argument("--user-col", default="user_id", help="user id column (default: %(default)s)")
    plain.add_argument("--item-col", default="item_id", help="item id column (default: %(default)s)")
    plain.add_argument("--time-col", default="timestamp",
                       help="time column: unix seconds or ISO 8601 (default: %(default)s)")
    plain.add_argument("--label-col", help="0/1 label column (default: 'label' when present)")
    plain.add_argument("--rating-col", help="rating column turned into labels with --rating-threshold")
    plain.add_argument("--catalogue-item-col", help="item id column of --catalogue (default: --item-col)")
    plain.add_argument("--text-col", help="item text column (default: 'text' when present, else empty text)")
    plain.add_argument("--image-col", help="image path column (default: 'image' when present)")
    plain.add_argument("--category-col", help="category column (default: 'category' when present)")
    plain.set_defaults(handler=run_import_csv)


def _common_import_args(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="the data directory to create")
    parser.add_argument("--rating-threshold", type=float, default=4.0,
                        help="label = rating >= this when there is no label column (default: %(default)s)")
    parser.add_argument("--images-root", metavar="DIR",
                        help="folder that image paths are relative to (default: the item table's folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run_validate(args) -> int:
    from lis.datadir import load_datadir, summarize

    datadir = load_datadir(args.dir, check_images=not args.no_images)
    summary = summarize(datadir)
    if args.embeddings:
        summary["embeddings"] = _embeddings_summary(args.embeddings, datadir.catalogue)
    if args.pairs:
        from lis.schemas import load_pairs

        pairs = load_pairs(args.pairs, item_ids=datadir.catalogue["item_id"])
        summary["pairs"] = {"file": args.pairs, "pairs": int(len(pairs)), "anchors": int(pairs["anchor_id"].nunique())}
    _print(summary, args.json, title=f"{args.dir}: OK")
    return 0


def _embeddings_summary(path: str, catalogue) -> dict:
    import numpy as np

    from lis.embeddings import load_embeddings
    from lis.errors import DataError

    table = load_embeddings(path)
    covered = float(np.mean(table.index_of(catalogue["item_id"].tolist()) >= 0))
    if covered == 0:
        raise DataError(
            f"{Path(path).name}: field 'ids' shares no id with the catalogue (its first id is {table.ids[0]!r})."
        )
    return {"file": path, "rows": len(table), "dim": table.dim, "source": table.manifest.get("source"),
            "catalogue_coverage": covered}


def _check_import_args(args, inputs) -> None:
    """Boundary checks of both importers: a finite threshold, and an --out that cannot replace an input."""
    import math

    from lis.errors import ConfigError
    from lis.paths import check_output_dir

    if not math.isfinite(args.rating_threshold):
        raise ConfigError(f"--rating-threshold: must be a finite number; got {args.rating_threshold}.")
    check_output_dir(args.out, "--out", [*inputs, args.images_root])


def run_import_recbole(args) -> int:
    from lis.importers import import_recbole

    _check_import_args(args, [args.inter, args.item])

    summary = import_recbole(
        args.inter, args.item, args.out, rating_threshold=args.rating_threshold,
        user_field=args.user_field, item_field=args.item_field, time_field=args.time_field,
        label_field=args.label_field, rating_field=args.rating_field,
        text_fields=args.text_fields.split(",") if args.text_fields else None,
        category_field=args.category_field, image_field=args.image_field,
        images_root=args.images_root, overwrite=args.overwrite,
    )
    _print(summary, args.json, title=f"imported into {args.out}")
    return 0


def run_import_csv(args) -> int:
    from lis.importers import import_interactions_csv

    _check_import_args(args, [args.interactions, args.catalogue])

    summary = import_interactions_csv(
        args.interactions, args.out, user_col=args.user_col, item_col=args.item_col, time_col=args.time_col,
        label_col=args.label_col, rating_col=args.rating_col, rating_threshold=args.rating_threshold,
        catalogue_csv=args.catalogue, catalogue_item_col=args.catalogue_item_col, text_col=args.text_col,
        image_col=args.image_col, category_col=args.category_col, images_root=args.images_root,
        overwrite=args.overwrite,
    )
    _print(summary, args.json, title=f"imported into {args.out}")
    return 0


def _print(summary: dict, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(title)
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {_show(value)}")


def _show(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " .. ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    return str(value)
