"""Print one JSON line per process: rank, world size and backend as accelerate set them up.

Launched by tests/align/test_distributed_loss.py through tests/helpers_dist.launch_two_procs.
"""
import os

from accelerate import Accelerator

from tests.helpers_dist import print_result  # the launcher puts the repo root on PYTHONPATH


def main():
    acc = Accelerator(cpu=True)  # see accelerate_configs/cpu_2proc.yaml: the yaml alone is not enough
    import torch.distributed as dist

    info = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "distributed_type": str(acc.distributed_type),
        "pid": os.getpid(),
    }
    print_result(info)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
