"""The cached loss (GradCache) gives the loss and gradients of the uncached batch, in float64.

One process here; two processes (DDP, ZeRO-2, ZeRO-3) in test_cached_loss_distributed.py.
"""
from __future__ import annotations

import pytest
import torch

from align.cached_loss import cached_forward
from align.collate import BatcherSource, PairCollator, PairDataset, batcher_for_datadir, items_from_catalogue

TOL = 1e-6  # the bar; float64 throughout, observed ~1e-12


@pytest.fixture(scope="module")
def setup(data_dir, base_model, tmp_path_factory, one_torch_thread):
    from align.alignment_model import build_alignment_model
    from lis.datadir import load_datadir
    from tests.align.train_helpers import recipe

    out = tmp_path_factory.mktemp("cached")
    rec = recipe(data_dir, base_model, out, "loss.matryoshka_dims=[128,32,8]", "embedder.dim=128")
    model, processor, family = build_alignment_model(rec, str(base_model))
    model.double().train()
    datadir = load_datadir(data_dir, check_images=False)
    batcher = batcher_for_datadir(datadir, processor, family, max_text_tokens=16, image_size=32)
    return model, BatcherSource(batcher, items_from_catalogue(datadir))


def _double(batch):
    if isinstance(batch, dict):
        return {k: _double(v) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_double(v) for v in batch]
    return batch.double() if torch.is_tensor(batch) and batch.is_floating_point() else batch


def _run(model, batch, cached):
    model.zero_grad(set_to_none=True)
    out = cached_forward(model, batch) if cached else model(**batch)
    out["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["loss"].item(), out["accuracy"].item(), grads


# anchors 0..7, positives with a repeat (12 twice) and an anchor reused as positive (3), hard
# negatives that repeat across pairs, hit a positive (12) and the row's own item.
PAIRS = ([0, 1, 2, 3, 4, 5, 6, 7], [10, 11, 12, 13, 3, 12, 14, 15],
         [[20, 21, -1], [21, 12, 22], [-1, -1, -1], [3, 23, 24], [25, 20, -1], [26, 27, 28], [29, -1, -1], [30, 31, 7]])


@pytest.mark.parametrize("negatives", [False, True], ids=["in_batch", "hard_negatives"])
def test_cached_loss_equals_the_uncached_batch(setup, negatives):
    model, source = setup
    anchors, positives, hard = PAIRS
    data = PairDataset(anchors, positives, torch.rand(8, generator=torch.Generator().manual_seed(0)) + 0.5,
                       hard if negatives else None)
    features = [data[i] for i in range(len(data))]
    whole = _double(PairCollator(source, use_weights=True, hard_negatives=negatives)(features))
    chunked = _double(PairCollator(source, use_weights=True, hard_negatives=negatives, chunk_size=5)(features))
    assert len(chunked["chunks"]) >= 4 and len(whole.get("negative_ids", ())) == (13 if negatives else 0)
    stats = [b.clone() for b in model.embedder.center.buffers()]
    loss, accuracy, ref = _run(model, whole, cached=False)
    after_uncached = [b.clone() for b in model.embedder.center.buffers()]
    for b, v in zip(model.embedder.center.buffers(), stats):
        b.copy_(v)
    got_loss, got_accuracy, got = _run(model, chunked, cached=True)
    assert got_loss == pytest.approx(loss, abs=TOL) and got_accuracy == pytest.approx(accuracy, abs=TOL)
    assert sorted(got) == sorted(ref) and any("lora" in n for n in ref) and any("log_scale" in n for n in ref)
    worst = max(float((got[n] - ref[n]).abs().max()) for n in ref)
    assert worst < TOL, worst
    assert max(float(g.abs().max()) for g in ref.values()) > 1e-3  # the comparison is not of zeros
    # The centring's running statistics moved once, as without the cache.
    for b, v in zip(model.embedder.center.buffers(), after_uncached):
        torch.testing.assert_close(b, v, rtol=0, atol=TOL)


def test_one_chunk_is_the_plain_forward(setup):
    model, source = setup
    data = PairDataset(*PAIRS[:2])
    features = [data[i] for i in range(len(data))]
    batch = _double(PairCollator(source, chunk_size=100)(features))
    assert len(batch["chunks"]) == 1
    _, _, ref = _run(model, batch, cached=False)
    _, _, got = _run(model, batch, cached=True)
    assert all(torch.equal(got[n], ref[n]) for n in ref)
