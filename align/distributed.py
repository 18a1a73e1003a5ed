"""Small torch.distributed helpers that also work in a single process.

Every helper degrades to the obvious single-process answer when ``torch.distributed`` is not
available or not initialised (world size 1), so the loss and the trainer run unchanged under
``python script.py``, ``accelerate launch`` (DDP or DeepSpeed) and ``torchrun``. Nothing here
imports accelerate: whoever launched the processes has already initialised the process group.

Helpers:
- ``world_info()`` -> ``WorldInfo(rank, world_size, local_rank, backend)``.
- ``is_main_process()`` -> True on global rank 0 (and when not distributed).
- ``gather_sizes(n)`` -> list of every rank's batch size (one tiny collective).
- ``all_gather_with_grad(t, sizes=None)`` -> the concatenation of every rank's ``t`` along dim 0;
  gradients flow back to each rank's own slice (backward = all-reduce SUM of the gathered
  gradient, then the local slice). Every rank must call backward on a loss that used it.
- ``all_gather_no_grad(t, sizes=None)`` -> the same concatenation with no autograd link.
- ``broadcast_object(obj, src=0)`` -> ``obj`` from rank ``src`` on every rank (pickled).

Unequal batch sizes across ranks (the last batch of an epoch) are supported: pass ``sizes``
from ``gather_sizes`` (or let the gather find them, at the cost of one extra small collective);
tensors are padded to the largest size for the collective and the padding is cut off again.
Only dim 0 may differ between ranks; the other dims, the dtype and the device must agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "WorldInfo",
    "world_info",
    "is_distributed",
    "is_main_process",
    "gather_sizes",
    "all_gather_with_grad",
    "all_gather_no_grad",
    "broadcast_object",
]


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # "gloo", "nccl", ... or None when not distributed


def is_distributed() -> bool:
    """True when a process group is initialised and has more than one member."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> WorldInfo:
    """Rank, world size, local rank and backend of this process (0, 1, 0, None when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return WorldInfo(0, 1, 0, None)
    # LOCAL_RANK is set by torchrun/accelerate/deepspeed launchers; torch.distributed itself
    # does not know which ranks share a host.
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return WorldInfo(dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()))


def is_main_process() -> bool:
    """True on global rank 0, and in a single process."""
    return world_info().rank == 0


def launch_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``; 0 when alone).

    Valid before the process group exists (logging set-up, building the tiny base model once).
    """
    return int(os.environ.get("RANK", "0"))


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's ``n`` (e.g. its local batch size), in rank order. ``[n]`` when alone.

    ``device`` must suit the backend: "cpu" for gloo, the rank's CUDA device for nccl.
    """
    if not is_distributed():
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.int64, device=device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def _gather_padded(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather of ``t`` (dim 0 may differ per rank as given by ``sizes``), no autograd."""
    t = t.contiguous()
    biggest = max(sizes)
    if t.shape[0] < biggest:  # pad so every rank sends the same shape, as all_gather requires
        pad = t.new_zeros((biggest - t.shape[0], *t.shape[1:]))
        t = torch.cat([t, pad], dim=0)
    out = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(out, t)
    return torch.cat([piece[:n] for piece, n in zip(out, sizes)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all_gather. Backward: all_reduce SUM of the full gradient, keep our slice.

    Why not ``torch.distributed.nn.functional.all_gather``: its backward needs reduce_scatter,
    which gloo lacks (torch emulates it with one scatter per rank), and it requires equal
    sizes. One all_reduce works on every backend and with padding; the gathered embeddings
    are small (global batch x dim), so sending the whole gradient costs little.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _gather_padded(t, list(sizes))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()  # all_reduce is in place; never touch autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, keeping the autograd graph.

    The gradient that reaches this rank's ``t`` is the SUM over ranks of the gradients of
    their losses with respect to this rank's slice (so with DDP's gradient averaging, a
    per-rank loss whose mean over ranks is the global loss gives the global gradient).
    Returns ``t`` itself when not distributed.
    """
    if not is_distributed():
        return t
    sizes = sizes if sizes is not None else gather_sizes(t.shape[0], t.device)
    return _AllGatherWithGrad.apply(t, tuple(sizes), dist.get_rank())


def all_gather_no_grad(t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, detached (no gradient to any rank).

    Returns ``t.detach()`` when not distributed. Works for any dtype gloo/nccl can send
    (int64 ids included).
    """
    if not is_distributed():
        return t.detach()
    sizes = sizes if sizes is not None else gather_sizes(t.shape[0], t.device)
    with torch.no_grad():
        return _gather_padded(t.detach(), sizes)


def broadcast_object(obj, src: int = 0):
    """Return rank ``src``'s ``obj`` on every rank (any picklable object). ``obj`` when alone.

    Uses ``broadcast_object_list``, which pickles: fine for configs, paths and small lists,
    not for large tensors (broadcast those with ``dist.broadcast``).
    """
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
