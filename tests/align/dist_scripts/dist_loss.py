"""Each rank computes InfoNCELoss on its slice of loss_case's batch under DDP; prints RESULT.

Usage (through tests/helpers_dist.launch_two_procs, config cpu_2proc):
    dist_loss.py --sizes 5,5 [--no-gather-grad] [--global-loss]
--sizes: rows per rank (may differ, e.g. 6,4, to exercise the padded gather).
"""
import argparse
import json

from accelerate import Accelerator

from loss_case import Model, make_batch, run  # this script's folder is on sys.path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5,5")
    ap.add_argument("--no-gather-grad", action="store_true")
    ap.add_argument("--global-loss", action="store_true", help="local_loss=False")
    a = ap.parse_args()

    acc = Accelerator(cpu=True)
    sizes = [int(s) for s in a.sizes.split(",")]
    assert len(sizes) == acc.num_processes, (sizes, acc.num_processes)
    model = acc.prepare(Model(gather_with_grad=not a.no_gather_grad, local_loss=not a.global_loss))

    xa, xp, aid, pid, w, known = make_batch()
    lo = sum(sizes[: acc.process_index])
    rows = slice(lo, lo + sizes[acc.process_index])
    res = run(model, xa[rows], xp[rows], aid[rows], pid[rows], w[rows], known)
    res.update(rank=acc.process_index, world_size=acc.num_processes, rows=[rows.start, rows.stop])
    print("RESULT " + json.dumps(res), flush=True)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
