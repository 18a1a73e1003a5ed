"""Each rank computes InfoNCELoss on its slice of loss_case's batch under DDP; prints RESULT.

One launch runs every case (process start-up dominates the cost): for each case a fresh
``Model`` is wrapped in DDP by ``accelerator.prepare``, the rank's rows go forward and backward,
and the rank prints its loss, accuracy, input gradients and DDP-averaged parameter gradients.
Usage (through tests/helpers_dist.launch_two_procs, config cpu_2proc): dist_loss.py
"""
from accelerate import Accelerator

from tests.helpers_dist import print_result  # the launcher puts the repo root on PYTHONPATH
from tests.align.dist_scripts.loss_case import CASES, Model, make_batch, run


def main():
    acc = Accelerator(cpu=True)  # see accelerate_configs/cpu_2proc.yaml
    xa, xp, aid, pid, w, known = make_batch()
    results = {}
    for name, case in CASES.items():
        sizes = case["sizes"]
        assert len(sizes) == acc.num_processes, (sizes, acc.num_processes)
        model = acc.prepare(Model(**case["loss"]))
        lo = sum(sizes[: acc.process_index])
        rows = slice(lo, lo + sizes[acc.process_index])
        results[name] = run(model, xa[rows], xp[rows], aid[rows], pid[rows], w[rows], known)
    print_result({"rank": acc.process_index, "world_size": acc.num_processes, "cases": results})
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
