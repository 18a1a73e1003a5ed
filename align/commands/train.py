"""``lis-align train RECIPE.yaml [--accelerate-config NAME] [--num-processes N] [key=value ...]``.

Without ``--accelerate-config`` the recipe trains in this process (one CPU or one GPU). With
it, the command becomes ``accelerate launch --config_file accelerate_configs/NAME.yaml
[--num_processes N] -m align.train RECIPE key=value ...`` and returns its exit status. Either way
the training itself is :mod:`align.train`'s (its :func:`align.train.main`).

Several machines: run the same command on each, adding ``--num-machines M --machine-rank R
--main-process-ip IP_OF_MACHINE_0 [--main-process-port PORT]`` (passed on to accelerate as
``--num_machines`` ...; ``--num-processes`` then counts the processes of ALL machines).
"""
from __future__ import annotations

import os
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
    parser.add_argument("--num-processes", type=int, default=None,
                        help="override the config's process count (all machines together)")
    machines = parser.add_argument_group("several machines (run the command on each; needs --accelerate-config)")
    machines.add_argument("--num-machines", type=int, default=None, help="how many machines train together")
    machines.add_argument("--machine-rank", type=int, default=None, help="this machine: 0 (the main one) .. M-1")
    machines.add_argument("--main-process-ip", default=None, help="address of machine 0, reachable from the others")
    machines.add_argument("--main-process-port", type=int, default=None, help="a free port on machine 0")
    parser.set_defaults(handler=run_train)


MACHINE_FLAGS = ("num_machines", "machine_rank", "main_process_ip", "main_process_port")


def launch_command(recipe: str, overrides, config: str, num_processes: int | None = None, **machines) -> list[str]:
    """The ``accelerate launch`` command line for a recipe (exposed for tests and for printing).

    ``machines``: any of ``num_machines``, ``machine_rank``, ``main_process_ip``,
    ``main_process_port`` (None = the config's value), passed on as accelerate's flags.
    """
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
    _check_machines(machines)
    for name in MACHINE_FLAGS:
        if machines.get(name) is not None:
            cmd += [f"--{name}", str(machines[name])]
    return cmd + ["-m", "align.train", recipe, *overrides]


def run_train(args) -> int:
    if args.accelerate_config is None:
        from lis.errors import ConfigError

        if args.num_processes not in (None, 1):
            raise ConfigError("--num-processes: needs --accelerate-config (one process trains in-process).")
        given = next((name for name in MACHINE_FLAGS if getattr(args, name) is not None), None)
        if given is not None:
            flag = "--" + given.replace("_", "-")
            raise ConfigError(f"{flag}: needs --accelerate-config (several machines train through accelerate).")
        from align.train import main

        return main([args.recipe, *args.overrides])
    cmd = launch_command(args.recipe, args.overrides, args.accelerate_config, args.num_processes,
                         **{name: getattr(args, name) for name in MACHINE_FLAGS})
    from align.launcher import check_before_launch, launch

    check_before_launch(args.recipe, args.overrides)
    print("lis-align train: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return launch(cmd, env)  # the workers die with this process (align/launcher.py)


def _check_machines(machines: dict) -> None:
    from lis.errors import ConfigError

    unknown = set(machines) - set(MACHINE_FLAGS)
    if unknown:
        raise TypeError(f"launch_command: unknown machine settings {sorted(unknown)}")
    count, rank = machines.get("num_machines"), machines.get("machine_rank")
    if count is not None and count < 1:
        raise ConfigError(f"--num-machines: must be at least 1; got {count}.")
    if rank is not None and (rank < 0 or (count is not None and rank >= count)):
        top = f"{count - 1}" if count is not None else "M-1"
        raise ConfigError(f"--machine-rank: must be in 0..{top} (0 is the main machine); got {rank}.")
    port = machines.get("main_process_port")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--main-process-port: must be a TCP port (1..65535); got {port}.")
