"""``lis-align demo``: the main job on the embedded default (see :mod:`align.demo`)."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job: simulate, compare builders by LIS, train with LoRA, early-stop on LIS, publish (dry run)",
        description="Simulate the demo platform, compare preference-data builders by LIS, train the tiny VLM "
                    "with LoRA on the best builder's pairs until LIS stops improving, keep the best adapter "
                    "and assemble a ready-to-publish folder. Takes about 4 minutes on 2 idle CPU cores after "
                    "set-up (measured: 249 s).",
    )
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed (default: %(default)s)")
    parser.add_argument("--preset", default="demo", choices=("tiny", "demo"),
                        help="simulated platform size (default: %(default)s; tiny is a smoke test)")
    parser.add_argument("--no-publish", action="store_true", help="skip assembling the publish folder")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. training.max_steps=300")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import logging

    from align.config import load_recipe
    from align.demo import DEMO_RECIPE, run_demo

    load_recipe(DEMO_RECIPE, list(args.overrides))  # a bad override fails now, not after the simulation
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "PIL", "httpx", "urllib3", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_demo(args.out, seed=args.seed, preset=args.preset, overrides=args.overrides, publish=not args.no_publish)
    return 0
