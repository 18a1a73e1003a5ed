"""Two optimiser steps of a tiny model under accelerate + DeepSpeed on CPU; prints RESULT per rank.

Launched with accelerate_configs/deepspeed_zero{2,3}_cpu.yaml through launch_two_procs. Each
rank prints its rank, world size, backend, ZeRO stage, losses and the full (gathered)
parameters after the steps; the test checks they agree across ranks and with
``reference_params`` (one process, the whole global batch, the same clipping and AdamW).
"""
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers_dist import print_result  # the launcher puts the repo root on PYTHONPATH

STEPS, BATCH, LR, CLIP = 2, 4, 1e-2, 1.0


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def dataset():
    return TensorDataset(torch.randn(64, 8, generator=torch.Generator().manual_seed(1)))


def reference_params(world_size=2):
    """Single process: step k sees the world_size micro-batches the ranks saw, averaged."""
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    x_all = dataset().tensors[0]
    for k in range(STEPS):
        # accelerate shards by batches: rank r of step k gets batch k * world_size + r.
        x = x_all[k * world_size * BATCH:(k + 1) * world_size * BATCH]
        model(x).pow(2).mean().backward()  # mean over the global batch = average of rank means
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
    return [p.detach().double().flatten().tolist() for p in model.parameters()]


def main():
    import deepspeed
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    t0 = time.time()
    # Built before the Accelerator, the order our trainer uses under ZeRO-3 (with
    # zero3_init_flag: false, building it after also works for a plain torch model).
    model = build_model()
    # gloo: without it accelerate counts a world of 1, DeepSpeed 2, and prepare() fails.
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    opt = torch.optim.AdamW(model.parameters(), lr=LR)  # torch's: no DeepSpeed op to compile
    # DeepSpeed needs a micro batch size: accelerate takes it from a prepared DataLoader.
    loader = DataLoader(dataset(), batch_size=BATCH)
    model, opt, loader = acc.prepare(model, opt, loader)  # the loader shards batches per rank

    losses = []
    for _, (x,) in zip(range(STEPS), loader):
        loss = model(x).pow(2).mean()
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())

    # ZeRO-3 partitions parameters across ranks: gather them (a no-op under ZeRO-2).
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        full = [p.detach().double().flatten().tolist() for p in params]
    res = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "backend": dist.get_backend(),
        "distributed_type": str(acc.distributed_type),
        "zero_stage": acc.state.deepspeed_plugin.zero_stage,
        "losses": losses,
        "params": full,
        "seconds": time.time() - t0,
    }
    print_result(res)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
