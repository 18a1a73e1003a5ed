"""``lis-align synth``: write a simulated platform (data dir plus hidden truth)."""
from __future__ import annotations

import argparse

from lis.synth.config import PRESETS

HELP = """\
Simulate a small platform whose truth is known and write it to OUT:
catalogue.parquet, log.parquet, images/*.png (the data dir), truth.safetensors (true item
latents), users_truth.safetensors (each session's true user taste, keyed by session_id) and
synth.json (parameters and summary). The same --seed gives byte-identical files.

Presets: tiny (200 items, ~5k impressions: unit tests), demo (2k items, ~100k impressions:
the product demo), bench (20k items, >= 1M impressions: benchmarks)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="write a simulated platform (data dir plus truth)", description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="world size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory (new, empty, or a previous synth output, which is replaced)")
    parser.add_argument("--base-logit", action="store_true",
                        help="add a base_logit column: the logging policy's own logit estimate")
    parser.add_argument("--scale", type=int, metavar="N",
                        help="write N independent user populations of the preset as a Parquet dataset log/ "
                             "(one chunk in memory at a time; bench x 64 = ~74M impressions; no truth files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import dataclasses
    import time

    from lis.synth import simulate

    config = PRESETS[args.preset]
    if args.base_logit:
        config = dataclasses.replace(config, include_base_logit=True)
    started = time.perf_counter()
    if args.scale is not None:
        from lis.synth.chunked import simulate_chunked

        say = None if args.quiet else (lambda message: print(f"synth: {message}", flush=True))
        summary = simulate_chunked(config, args.seed, args.scale, args.out, progress=say)
        print(f"wrote {args.out}: {summary['impressions']:,} impressions in {summary['seconds']} s")
        return 0
    summary = simulate(config, args.seed, args.out, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {args.out} (preset {args.preset}, seed {args.seed}) in {time.perf_counter() - started:.1f} s")
        for key, value in summary.items():
            print(f"  {key:<22} {value}")
    return 0
