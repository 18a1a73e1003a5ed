"""``lis-align train RECIPE.yaml [--accelerate-config NAME] [--num-processes N] [key=value ...]``.

Without ``--accelerate-config`` the recipe trains in this process (one CPU or one GPU). With
it, the command becomes ``accelerate launch --config_file accelerate_configs/NAME.yaml
[--num_processes N] -m align.train RECIPE key=value ...`` and returns its exit status. Either way
the training itself is :mod:`align.train`'s (its :func:`align.train.main`).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "accelerate_configs"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune a VLM with LoRA into an item-embedding model (a recipe YAML)",
        description="Train a recipe (see recipes/configs/). Overrides look like training.max_steps=50.",
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/configs/tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides")
    parser.add_argument("--accelerate-config", default=None,
                        help="a name in accelerate_configs/ (cpu_2proc, multi_gpu, deepspeed_zero2, ...) or a yaml "
                             "path: launch with accelerate instead of training in this process")
    parser.add_argument("--num-processes", type=int, default=None, help="override the config's process count")
    parser.set_defaults(handler=run_train)


def launch_command(recipe: str, overrides, config: str, num_processes: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line for a recipe (exposed for tests and for printing)."""
    from lis.errors import ConfigError

    path = Path(config)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{config}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"--accelerate-config: {config!r} is not a file nor one of: {known}.")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + ["-m", "align.train", recipe, *overrides]


def run_train(args) -> int:
    if args.accelerate_config is None:
        if args.num_processes not in (None, 1):
            from lis.errors import ConfigError

            raise ConfigError("--num-processes: needs --accelerate-config (one process trains in-process).")
        from align.train import main

        return main([args.recipe, *args.overrides])
    cmd = launch_command(args.recipe, args.overrides, args.accelerate_config, args.num_processes)
    print("lis-align train: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return subprocess.call(cmd, env=env)
