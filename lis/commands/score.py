"""``lis-align lis score``: LIS of preference-data builders, AIS of embedding tables, efficiency, verdict."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SCORE_HELP = """\
Score preference data and embedding tables against the impression log of DIR.

LIS (per --builder): the AUC/GAUC gain a leaked oracle built from that builder's pairs gives
the ranker on the evaluation window -- the ceiling of the preference data. AIS (per
--embeddings NAME=FILE): the gain the table's similarity features give -- what a trained model
delivers. eta = AIS / LIS against each table's own ceiling: the builder (and options) its
manifest names, else the best builder scored; reported when that LIS interval lies above 0,
and an AIS interval above the LIS interval is 'exceeds_ceiling', not a share. Gains carry paired
bootstrap 95% intervals over users (AUC from global probes, GAUC from within-user probes). A
log with fewer than 20 users (10 with both labels) in the probe-test half is refused (exit 2).

Windows: the last --eval-fraction of impressions is the evaluation window (halved by time
into probe-fit and probe-test); the ranker and any table scored by AIS must be trained on the
earlier fit window only (a table whose manifest 'trained_until' reaches into the evaluation
window is refused).

Writes OUT (report.json), OUT with .md (a table a person reads) and .png (gains with
intervals); prints the markdown to stdout and progress to stderr.

Builders: co_engagement, ranker_knn, category, random, user (your pairs file: --pairs-file or
--builder-option user.path=FILE). Builder options: --builder-option NAME.KEY=VALUE, e.g.
--builder-option co_engagement.window=50 --builder-option co_engagement.same_session=false.
Modes: --mode probe (default: a logistic probe on [base_logit, controls, features]) or full
(retrains the built-in ranker with the features; slower). --lis-mode embedding (default: the
oracle is a free embedding table fitted to the leaked pairs) or pairs (looks the pair weights up;
fast)."""


def register(subparsers) -> None:
    lis = subparsers.add_parser("lis", help="score preference data (LIS) and embedding tables (AIS)",
                                description="The Leakage Impact Score evaluator.")
    actions = lis.add_subparsers(dest="lis_command", metavar="ACTION")
    actions.required = True
    score = actions.add_parser("score", help="LIS per builder, AIS per embedding table, eta and a verdict",
                               description=SCORE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    score.add_argument("--data", required=True, metavar="DIR", help="the data directory (catalogue + log)")
    score.add_argument("--builder", action="append", default=[], metavar="NAME",
                       help="a preference-data builder to score (repeatable; default: co_engagement)")
    score.add_argument("--embeddings", action="append", default=[], metavar="NAME=FILE",
                       help="an embedding table (.safetensors) to score by AIS (repeatable; NAME defaults to the file stem)")
    score.add_argument("--out", required=True, metavar="FILE", help="report.json path; .md and .png are written beside it")
    score.add_argument("--mode", choices=("probe", "full"), default="probe", help="gain estimator (default: %(default)s)")
    score.add_argument("--lis-mode", choices=("embedding", "pairs"), default="embedding",
                       help="leaked oracle: fitted embedding table or pair-weight lookup (default: %(default)s)")
    score.add_argument("--builder-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                       help="an option of one builder (repeatable); true/false/none/numbers are parsed")
    score.add_argument("--pairs-file", metavar="PATH", help="the pairs file of builder 'user'")
    score.add_argument("--ranker", choices=("builtin", "column"), default="builtin",
                       help="base ranker: the built-in ID model or the log's base_logit column (default: %(default)s)")
    score.add_argument("--eval-fraction", type=float, default=0.3, metavar="F",
                       help="share of impressions, at the end, forming the evaluation window (default: %(default)s)")
    score.add_argument("--bootstrap", type=int, default=200, metavar="B", help="bootstrap resamples (default: %(default)s)")
    score.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    score.add_argument("--history-len", type=int, default=50, metavar="L", help="history length L (default: %(default)s)")
    score.add_argument("--oracle-dim", type=int, metavar="D",
                       help="dimension of the leaked oracle table (default: the first table's, else 64)")
    score.add_argument("--oracle-steps", type=int, default=600, metavar="N",
                       help="training steps of each oracle table (default: %(default)s)")
    score.add_argument("--workers", type=int, default=1, metavar="N",
                       help="fit the folds' leaked oracle tables in N processes (default: %(default)s; the "
                            "tables, and so every number, do not depend on N)")
    score.add_argument("--no-segments", action="store_true", help="skip the per-segment gains of each table")
    score.add_argument("--engine", choices=("memory", "spark"), default="memory",
                       help="memory (default) or spark: the same numbers on Apache Spark, reading the log as a "
                            "Parquet file or dataset folder (DIR/log.parquet or DIR/log/); needs pyspark and Java 17")
    score.add_argument("--spark-master", metavar="URL", help="Spark master (default: local[*])")
    score.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                       help="a Spark setting (repeatable), e.g. spark.driver.memory=8g")
    score.set_defaults(handler=run_score)


def run_score(args) -> int:
    from lis.commands.checks import check_score_args, table_paths
    from lis.datadir import load_datadir
    from lis.engine import make_evaluator
    from lis.evaluator import EvaluatorConfig
    from lis.report import render_markdown, write_report
    from lis.spark.session import parse_conf

    started = time.perf_counter()
    builders = args.builder or ["co_engagement"]
    options = parse_builder_options(args.builder_option, builders, args.pairs_file)
    check_score_args(args, table_paths(args.embeddings), [opts.get("path") for opts in options.values()])
    tables = load_tables(args.embeddings)
    progress(f"loading {args.data}")
    if args.engine == "spark":
        from lis.spark.cli import load_spark_log

        data, _ = load_spark_log(args.data, args.spark_master, args.spark_conf)
    else:
        data = load_datadir(args.data, check_images=False)
    config = EvaluatorConfig(engine=args.engine, spark_master=args.spark_master, spark_conf=parse_conf(args.spark_conf),
        eval_fraction=args.eval_fraction, history_len=args.history_len, ranker=args.ranker, mode=args.mode,
        n_bootstrap=args.bootstrap, lis_mode=args.lis_mode, oracle_dim=oracle_dim(args.oracle_dim, tables),
        oracle_steps=args.oracle_steps, seed=args.seed, builder_options=options, workers=args.workers,
    )
    config.check()
    progress(f"preparing the evaluator ({args.engine} engine, ranker {args.ranker})")
    evaluator = make_evaluator(data.log, data.catalogue, config, name="log.parquet")
    for name, table in tables.items():   # refuse leaked or foreign tables before the slow part
        evaluator.check_table(table, name)
        evaluator.check_overlap(table, name)
    report = evaluator.report(tables, builders=builders, with_segments=not args.no_segments, progress=progress)
    paths = write_report(report, args.out)
    print(render_markdown(report))
    progress(f"wrote {paths['json']}, {paths['md'].name} and {paths['png'].name} "
             f"in {time.perf_counter() - started:.1f} s")
    return 0


def progress(message: str) -> None:
    print(f"lis score: {message}", file=sys.stderr, flush=True)


def parse_builder_options(items: list[str], builders: list[str], pairs_file: str | None) -> dict:
    """``["co_engagement.window=50"]`` -> ``{"co_engagement": {"window": 50}}``, checked against
    the builders' option names so a typo fails before any work."""
    from lis.builders import BUILDERS, builder_options
    from lis.commands.pairs import parse_value
    from lis.errors import ConfigError

    for builder in builders:
        if builder not in BUILDERS:
            raise ConfigError(f"--builder: unknown builder {builder!r}; choose one of {', '.join(BUILDERS)}.")
    if len(set(builders)) != len(builders):
        raise ConfigError(f"--builder: each builder may be named once; got {', '.join(builders)}.")
    options: dict[str, dict] = {}
    if pairs_file is not None:
        options.setdefault("user", {})["path"] = pairs_file
    for item in items:
        target, sep, text = item.partition("=")
        builder, dot, key = target.strip().partition(".")
        key = key.strip().replace("-", "_")
        if not sep or not dot or not builder or not key:
            raise ConfigError(f"--builder-option must look like NAME.KEY=VALUE; got {item!r}.")
        if builder not in builders:
            raise ConfigError(f"--builder-option {item!r}: builder {builder!r} is not scored "
                              f"(scored: {', '.join(builders)}).")
        allowed = builder_options(builder)
        if key not in allowed:
            raise ConfigError(f"--builder-option {item!r}: builder '{builder}' has no option '{key}'; "
                              f"its options are: {', '.join(allowed) or 'none'}.")
        options.setdefault(builder, {})[key] = parse_value(text.strip())
    if "user" in builders and "path" not in options.get("user", {}):
        raise ConfigError("builder 'user' needs a pairs file: --pairs-file PATH (or --builder-option user.path=PATH).")
    return options


def load_tables(items: list[str]) -> dict:
    """``["name=path.safetensors", "other.safetensors"]`` -> {name: EmbeddingTable}, each validated."""
    from lis.embeddings import load_embeddings
    from lis.errors import ConfigError

    tables = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise ConfigError(f"--embeddings must look like NAME=FILE (or FILE); got {item!r}.")
        if name in tables:
            raise ConfigError(f"--embeddings: the name {name!r} is used twice; give each table its own NAME=.")
        tables[name] = load_embeddings(path)
    return tables


def oracle_dim(requested: int | None, tables: dict) -> int:
    """The oracle's dimension: as asked, else the first table's (docs/science.md section 6: 'of the model's dimension'), else 64."""
    from lis.errors import ConfigError

    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--oracle-dim must be a positive integer; got {requested}.")
        return int(requested)
    dims = sorted({table.dim for table in tables.values()})
    if len(dims) > 1:
        progress(f"tables have dimensions {dims}; the oracle uses the first table's ({next(iter(tables.values())).dim}); "
                 "set --oracle-dim to choose")
    return next(iter(tables.values())).dim if tables else 64
