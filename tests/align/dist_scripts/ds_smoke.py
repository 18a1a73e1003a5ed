"""Two optimiser steps of a tiny model under accelerate + DeepSpeed on CPU; prints RESULT per rank.

Launched with accelerate_configs/deepspeed_zero{2,3}_cpu.yaml through launch_two_procs.
Prints the rank, world size, backend, ZeRO stage, the losses and a checksum of the full
(gathered) parameters after the steps, which must agree across ranks.
"""
import json
import time

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from torch import nn


def main():
    t0 = time.time()
    torch.manual_seed(0)
    # Built before the Accelerator: under ZeRO-3 an Accelerator created first would make
    # DeepSpeed partition parameters at construction (zero.Init), which this tiny model skips.
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    # gloo: DeepSpeed's CPU accelerator would otherwise pick "ccl" (oneCCL), not installed.
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # torch's: no DeepSpeed op to compile
    model, opt = acc.prepare(model, opt)

    g = torch.Generator().manual_seed(100 + acc.process_index)  # different data per rank
    losses = []
    for _ in range(2):
        x = torch.randn(4, 8, generator=g)
        loss = model(x).pow(2).mean()
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())

    import torch.distributed as dist

    full = acc.get_state_dict(model)  # gathers ZeRO-3 partitions (collective: every rank calls it)
    checksum = [float(v.double().sum()) for k, v in sorted(full.items())] if full else None
    res = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "backend": dist.get_backend(),
        "distributed_type": str(acc.distributed_type),
        "zero_stage": acc.state.deepspeed_plugin.zero_stage,
        "losses": losses,
        "checksum": checksum,
        "seconds": time.time() - t0,
    }
    print("RESULT " + json.dumps(res), flush=True)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
