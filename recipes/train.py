"""The plain training script: every recipe's launch line points here.

    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml \\
        recipes/train.py recipes/configs/tiny_cpu.yaml [section.field=value ...]
    python recipes/train.py recipes/configs/tiny_cpu.yaml          # one process

Thin on purpose: the packages do the work. This is ``python -m align.train`` (align/train.py)
under a path that accelerate can launch.
"""
import sys

from align.train import main

if __name__ == "__main__":
    sys.exit(main())
