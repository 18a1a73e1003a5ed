"""The cached contrastive loss (GradCache): a batch larger than memory, the same loss and gradient.

Gradient accumulation adds no negatives: every micro-batch only sees its own. The cached loss
keeps the whole batch as one contrastive batch while holding the activations of only one chunk
of items at a time (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup"). With the items collated in ``chunks`` (:class:`align.collate.PairCollator`
with ``chunk_size``), :func:`cached_forward`:

1. pools every chunk through the backbone without gradient (the cache: ``(N, hidden)``);
2. computes the loss from the cache (centring, head and the loss's cross-rank gather included)
   and its gradient with respect to the cache only;
3. re-runs every chunk but the last with gradient and backpropagates its slice of that
   gradient (``sum(pooled_chunk * grad_chunk)``), with the random state of its first pass;
4. returns the loss of the last chunk's live states joined to the others' cached ones: the
   caller's ordinary backward adds the last chunk's, the head's and the temperature's gradients
   and synchronises everything once.

The cache sits *before* the centring (a BatchNorm over the batch) and the head, so their batch
statistics are those of the whole batch, as without the cache; their running statistics are
updated once per step (step 2 restores them). Step 3 must not synchronise gradients across
ranks: under DDP it runs in ``no_sync()`` (the gradients accumulate locally and the final
backward all-reduces the sum once); under DeepSpeed it uses the engine's gradient accumulation
boundary (``set_gradient_accumulation_boundary(False)`` and ``engine.backward``), so ZeRO-2/3
reduce and partition the chunk gradients as accumulated micro-batches and step only at the
final backward (accelerate sets the boundary again there). Needs
``gradient_accumulation_steps: 1`` (checked by the recipe).

Cost: one extra forward of the backbone per item (step 1) and one small extra pass of head and
loss (step 2). Dropout draws the same masks in steps 1 and 3 (random state restored per chunk).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["cached_forward"]


def cached_forward(model, inputs: dict) -> dict:
    """The outputs of ``model(**inputs)`` (an :class:`align.alignment_model.AlignmentModel`, bare
    or wrapped by DDP / a DeepSpeed engine) with every chunk's backward but the last done.

    ``inputs`` holds ``chunks`` (item batches) and the pair fields. Call ``backward`` on the
    returned loss as usual (Trainer does); the gradients then equal the uncached batch's.
    """
    chunks = inputs["chunks"]
    pairs = {k: v for k, v in inputs.items() if k != "chunks"}
    if len(chunks) == 1 or not torch.is_grad_enabled():
        return model(**inputs)
    inner = _unwrap(model)
    states, pooled = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RandomState())
            with states[-1].restored():
                pooled.append(model(**chunk))
    cache = torch.cat(pooled)
    grad = _cache_gradient(inner, cache, pairs)
    with _accumulating(model) as backward:
        start = 0
        for chunk, state, part in zip(chunks[:-1], states, pooled):
            with state.restored():
                live = model(**chunk)
            backward((live * grad[start:start + len(part)]).sum())
            start += len(part)
    with states[-1].restored():
        return model(**pairs, pooled=cache[:start], chunks=chunks[-1:])


def _cache_gradient(inner, cache: torch.Tensor, pairs: dict) -> torch.Tensor:
    """d(loss)/d(cache): the loss of the cached states, differentiated with respect to them alone."""
    center = inner.embedder.center
    saved = [b.clone() for b in center.buffers()]  # the final pass updates the running statistics
    leaf = cache.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = inner.contrast(inner.embedder.project(leaf), **pairs)["loss"]
        (grad,) = torch.autograd.grad(loss, leaf)
    with torch.no_grad():
        for buffer, value in zip(center.buffers(), saved):
            buffer.copy_(value)
    return grad


def _unwrap(model):
    """The AlignmentModel inside DDP (``.module``) or a DeepSpeed engine (``.module``)."""
    while not hasattr(model, "contrast") and hasattr(model, "module"):
        model = model.module
    return model


@contextmanager
def _accumulating(model):
    """Yields ``backward(loss)`` that accumulates gradients on this rank without synchronising."""
    if hasattr(model, "set_gradient_accumulation_boundary") and hasattr(model, "backward"):  # DeepSpeed engine
        model.set_gradient_accumulation_boundary(False)
        try:
            yield model.backward
        finally:
            model.set_gradient_accumulation_boundary(True)
    elif hasattr(model, "no_sync"):  # DistributedDataParallel
        with model.no_sync():
            yield torch.Tensor.backward
    else:
        yield torch.Tensor.backward


class _RandomState:
    """The CPU (and CUDA) random state at creation, to replay a chunk's dropout masks."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @contextmanager
    def restored(self):
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield
