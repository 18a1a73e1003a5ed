"""``python -m align.train_main RECIPE.yaml [section.field=value ...]``: train one recipe.

The entry point that ``accelerate launch`` starts on every rank (``lis-align train
--accelerate-config NAME`` and ``recipes/train.py`` both end here). Bad input prints one
line naming the file and field and exits with status 2; a diverged run (NaN loss) too.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m align.train_main", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="recipe YAML (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. training.max_steps=50")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    from align.config import load_recipe
    from lis.errors import DataError

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        from align.train import run_training

        result = run_training(recipe)
    except DataError as error:
        print(f"lis-align train: {error}", file=sys.stderr, flush=True)
        return 2
    if rank == 0:
        shown = {k: v for k, v in result.items() if k != "trainer"}
        print("TRAINING DONE " + json.dumps(shown, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
