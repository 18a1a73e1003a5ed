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

Under DeepSpeed steps 3-4 run in the other order (the loss with the first chunk live, then the
other chunks; the returned loss backpropagates the last chunk's slice): ZeRO-3 *copies* a
parameter's gradient into its buffer at the first micro-step of an accumulation window and adds
later ones, so a parameter first reached at a later micro-step (the head, the temperature)
would be added to the previous step's stale gradient (measured: exactly doubled).

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

from align.distributed import gather_sizes

__all__ = ["cached_forward"]


def cached_forward(model, inputs: dict) -> dict:
    """The outputs of ``model(**inputs)`` (an :class:`align.alignment_model.AlignmentModel`, bare
    or wrapped by DDP / a DeepSpeed engine) with every chunk's backward but one done.

    ``inputs`` holds ``chunks`` (item batches) and the pair fields. Call ``backward`` on the
    returned loss as usual (Trainer does); the gradients then equal the uncached batch's.
    """
    chunks = inputs["chunks"]
    pairs = {k: v for k, v in inputs.items() if k != "chunks"}
    # Every rank runs as many passes as the rank with the most chunks: under ZeRO-3 each pass
    # gathers parameters (a collective), so a rank with fewer chunks repeats its last one
    # with a zero gradient.
    passes = max(gather_sizes(len(chunks), pairs["anchor_ids"].device))
    if passes == 1 or not torch.is_grad_enabled():
        return model(**inputs)
    extra = passes - len(chunks)
    states, pooled = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RandomState())
            with states[-1].restored():
                pooled.append(model(**chunk))
        for _ in range(extra):
            model(**chunks[-1])
    cache = torch.cat(pooled)
    grad = _cache_gradient(_unwrap(model), cache, pairs)
    ends = torch.tensor([len(p) for p in pooled]).cumsum(0).tolist()
    spans = list(zip([0] + ends[:-1], ends))

    def loss_pass(i):  # the loss with chunk i live and the others cached: every parameter takes part
        (a, b), tail = spans[i], cache[spans[i][1]:]
        with states[i].restored():
            return model(**pairs, chunks=[chunks[i]], pooled_before=cache[:a] if a else None,
                         pooled_after=tail if len(tail) else None)

    def surrogate(i):  # chunk i live: backward gives its share of the gradient
        with states[i].restored():
            return (model(**chunks[i]) * grad[spans[i][0]:spans[i][1]]).sum()

    def padding():
        return (model(**chunks[-1]) * 0).sum()

    if not _is_engine(model):  # DDP: the synchronised pass (the caller's) must use every parameter
        with _accumulating(model) as backward:
            for i in range(len(chunks) - 1):
                backward(surrogate(i))
            for _ in range(extra):
                backward(padding())
        return loss_pass(len(chunks) - 1)
    # DeepSpeed: ZeRO-3 copies (not adds) a parameter's gradient at the first micro-step of an
    # accumulation window, so the first pass must reach every parameter; the caller's pass then
    # backpropagates the last chunk, carrying the loss's value for logging.
    with _accumulating(model) as backward:
        outputs = loss_pass(0)
        backward(outputs["loss"])
        for i in range(1, len(chunks) - 1):
            backward(surrogate(i))
        for _ in range(extra):
            backward(padding())
    last = surrogate(len(chunks) - 1)
    return dict(outputs, loss=outputs["loss"].detach() + last - last.detach())


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


def _is_engine(model) -> bool:
    return hasattr(model, "set_gradient_accumulation_boundary") and hasattr(model, "backward")


@contextmanager
def _accumulating(model):
    """Yields ``backward(loss)``: accumulates gradients on this rank without synchronising them."""
    if _is_engine(model):  # DeepSpeed: a micro-step inside an accumulation window
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
