"""``lis-align pairs build``: build preference pairs from one time window of a data directory."""
from __future__ import annotations

import argparse

BUILD_HELP = """\
Build preference pairs (anchor_id, positive_id, weight) from one time window of the data
directory DIR and write them as Parquet.

Windows: the last --eval-fraction of impressions is the evaluation window, the rest the fit
window (the past). Train models on pairs from 'fit'; pairs from 'eval' leak the future and are
only for inspection (LIS builds its oracle from them itself).

Builders:
  co_engagement  NoteLLM co-engagement: s(A,B) = sum over users who engaged A and B within a
                 gap of 1/N_u (N_u = items the user engaged). Options: window=5 (next
                 engagements looked at), max_gap_seconds (default 1 day, or unlimited within
                 sessions), same_session (default: on if the log has session_id),
                 symmetric=true (false: directional A->B), low=0, high=inf (score range kept).
  ranker_knn     cosine neighbours in the built-in ID ranker's item table; the ranker is
                 trained on the fit window. Options: min_count=5 (training impressions an item
                 needs), dim=32.
  category       random pairs within a catalogue category (a control).
  random         random item pairs (the null control).
  user           your own pairs file: --pairs-file PATH.
All but 'user' take --top-k (pairs kept per anchor, default 10) and --seed.
Builder-specific options: --option KEY=VALUE (repeatable), e.g. --option symmetric=false."""


def register(subparsers) -> None:
    pairs = subparsers.add_parser(
        "pairs", help="build preference pairs from a data directory",
        description="Build preference pairs (the data an item-embedding model is aligned on).",
    )
    actions = pairs.add_subparsers(dest="pairs_command", metavar="ACTION")
    actions.required = True
    build = actions.add_parser("build", help="build pairs with one builder on one time window",
                               description=BUILD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--data", required=True, metavar="DIR", help="the data directory (catalogue + log)")
    build.add_argument("--builder", required=True, metavar="NAME",
                       help="co_engagement, ranker_knn, category, random or user")
    build.add_argument("--window", choices=("fit", "eval"), default="fit",
                       help="time window whose log the pairs come from (default: %(default)s)")
    build.add_argument("--out", required=True, metavar="FILE", help="output Parquet file (written atomically)")
    build.add_argument("--top-k", type=int, metavar="K", help="pairs kept per anchor (builder default: 10)")
    build.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    build.add_argument("--eval-fraction", type=float, default=0.3, metavar="F",
                       help="share of impressions, at the end, forming the evaluation window (default: %(default)s)")
    build.add_argument("--pairs-file", metavar="PATH", help="the pairs file for builder 'user'")
    build.add_argument("--hard-negatives", type=int, default=0, metavar="K",
                       help="add a list column hard_negative_ids: up to K items shown to the same user near the "
                            "anchor's engagement and not engaged, from the same window (lis.hard_negatives; default 0)")
    build.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a builder-specific option (repeatable); values true/false/none/numbers are parsed")
    build.set_defaults(handler=run_build)


def run_build(args) -> int:
    from lis.builders import BUILDERS, build_pairs
    from lis.datadir import load_datadir
    from lis.errors import ConfigError, DataError
    from lis.windows import split_windows

    if args.builder not in BUILDERS:
        raise ConfigError(f"--builder: unknown builder {args.builder!r}; choose one of {', '.join(BUILDERS)}.")
    check_build_args(args)
    options = parse_options(args.option)
    if args.top_k is not None:
        options["top_k"] = args.top_k
    if args.pairs_file is not None:
        options["path"] = args.pairs_file
    data = load_datadir(args.data, check_images=False)
    windows = split_windows(data.log, args.eval_fraction, name="log")
    log_slice = windows.slice(data.log, args.window)

    ranker = None
    if args.builder == "ranker_knn":
        # The ranker is the production model of the past: always trained on the fit window.
        from lis.rankers import IdCtrRanker

        dim = options.pop("dim", 32)
        ranker = IdCtrRanker.fit(windows.slice(data.log, "fit"), dim=dim, seed=args.seed)
    pairs = build_pairs(args.builder, log_slice, catalogue=data.catalogue, ranker=ranker, seed=args.seed, **options)
    if len(pairs) == 0:
        raise DataError(f"{args.data}: builder '{args.builder}' found no pairs in the {args.window} window "
                        f"({len(log_slice)} impressions); loosen its options or use a longer window.")
    if args.hard_negatives:
        from lis.hard_negatives import add_hard_negatives

        pairs = add_hard_negatives(pairs, log_slice, args.hard_negatives, seed=args.seed)
    from lis.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        pairs.to_parquet(tmp, index=False)
    print(f"wrote {len(pairs)} pairs over {pairs['anchor_id'].nunique()} anchors "
          f"(builder {args.builder}, {args.window} window: {len(log_slice)} impressions) to {args.out}")
    return 0


def check_build_args(args) -> None:
    """An --out that is a file and no input, before any work (the builder checks its own
    options, --top-k included; the windows check --eval-fraction)."""
    from lis.datadir import datadir_inputs
    from lis.paths import check_output_file

    check_output_file(args.out, "--out", [*datadir_inputs(args.data), args.pairs_file])


def parse_options(items: list[str]) -> dict:
    """``["window=3", "symmetric=false"]`` -> ``{"window": 3, "symmetric": False}``."""
    from lis.errors import ConfigError

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option must look like KEY=VALUE; got {item!r}.")
        options[key.strip().replace("-", "_")] = parse_value(text.strip())
    return options


def parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
