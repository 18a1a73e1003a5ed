"""InfoNCELoss in one process, against a hand-written loop reference (float64)."""
import math

import pytest
import torch

from align.loss import InfoNCELoss, encode_pairs

# 4 pairs: positive 5 appears twice (rows 0, 1); anchor 0 is also the positive of row 2.
AID = torch.tensor([0, 1, 2, 3])
PID = torch.tensor([5, 5, 0, 6])
# Entries (row, column) that must be masked, worked out by hand from the rules in align/loss.py.
DUP_A2P = {(0, 1), (0, 2), (1, 0)}  # row 0: column 1 repeats its positive 5, column 2 is item 0 itself
DUP_P2A = {(2, 0)}  # positive row 2 is item 0; anchor column 0 is item 0
KNOWN = [(3, 5)]  # anchor 3 ~ item 5: a2p (3, 0), (3, 1); p2a rows of positive 5 vs anchor 3
KNOWN_A2P = {(3, 0), (3, 1)}
KNOWN_P2A = {(0, 3), (1, 3)}


def reference(a, p, w, scale, masked_a2p=(), masked_p2a=()):
    """Loop-by-loop symmetric weighted InfoNCE with the given entries set to -inf."""
    a = a / a.norm(dim=1, keepdim=True)
    p = p / p.norm(dim=1, keepdim=True)
    total = 0.0
    for q, k, masked in ((a, p, set(masked_a2p)), (p, a, set(masked_p2a))):
        for i in range(len(q)):
            terms = [scale * q[i] @ k[j] for j in range(len(k)) if (i, j) not in masked]
            total = total + w[i] * (torch.logsumexp(torch.stack(terms), 0) - scale * q[i] @ k[i])
    return total / (2 * w.sum())


def batch(seed=0, n=4, d=3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    p = a + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return a, p, w


def loss_fn(**kw):
    fn = InfoNCELoss(**kw)
    # Exactly log(20) in float64 (the float32 parameter would differ from 20 at ~1e-7).
    fn.log_scale.data = torch.tensor(math.log(fn.logit_scale.item()), dtype=torch.float64)
    return fn


def test_loss_matches_handwritten_reference_without_masks():
    a, p, w = batch()
    ids = torch.arange(4)
    out = loss_fn()(a, p, ids, ids + 10, w)
    assert out["loss"].item() == pytest.approx(reference(a, p, w, 20.0).item(), abs=1e-12)


def test_duplicate_ids_mask_exactly_the_hand_listed_entries():
    a, p, w = batch()
    s = 2.0  # a low scale so every single entry moves the loss visibly
    got = loss_fn(init_scale=s)(a, p, AID, PID, w)["loss"].item()
    assert got == pytest.approx(reference(a, p, w, s, DUP_A2P, DUP_P2A).item(), abs=1e-12)
    # One entry fewer or one more gives a different loss, so the test pins the exact set.
    for fewer in DUP_A2P:
        assert got != pytest.approx(reference(a, p, w, s, DUP_A2P - {fewer}, DUP_P2A).item(), abs=1e-4)
    for extra in [(2, 3), (3, 2), (1, 2)]:
        assert got != pytest.approx(reference(a, p, w, s, DUP_A2P | {extra}, DUP_P2A).item(), abs=1e-4)
    assert got != pytest.approx(reference(a, p, w, s, DUP_A2P, set()).item(), abs=1e-4)


def test_mask_duplicates_false_treats_duplicates_as_negatives():
    a, p, w = batch()
    got = loss_fn(mask_duplicates=False)(a, p, AID, PID, w)["loss"].item()
    assert got == pytest.approx(reference(a, p, w, 20.0).item(), abs=1e-12)


@pytest.mark.parametrize("form", ["tuples", "tensor_k2", "keys"])
def test_known_pairs_are_masked_in_both_orders(form):
    a, p, w = batch()
    known = {"tuples": KNOWN, "tensor_k2": torch.tensor(KNOWN), "keys": encode_pairs(KNOWN)}[form]
    got = loss_fn()(a, p, AID, PID, w, known_pairs=known)["loss"].item()
    want = reference(a, p, w, 20.0, DUP_A2P | KNOWN_A2P, DUP_P2A | KNOWN_P2A).item()
    assert got == pytest.approx(want, abs=1e-12)
    # The reverse pair (5, 3) is the same relation: same masks.
    rev = loss_fn()(a, p, AID, PID, w, known_pairs=[(5, 3)])["loss"].item()
    assert rev == pytest.approx(want, abs=1e-12)


def test_known_pair_never_masks_the_target():
    a, p, w = batch()
    ids = torch.arange(4)
    known = [(int(ids[i]), int(ids[i]) + 10) for i in range(4)]  # every true pair is "known"
    got = loss_fn()(a, p, ids, ids + 10, w, known_pairs=known)["loss"].item()
    assert got == pytest.approx(reference(a, p, w, 20.0).item(), abs=1e-12)


def test_loss_is_symmetric_in_anchors_and_positives():
    a, p, w = batch(seed=3, n=6)
    aid, pid = torch.tensor([0, 1, 2, 3, 4, 1]), torch.tensor([7, 8, 0, 9, 7, 3])
    fn = loss_fn()
    forward = fn(a, p, aid, pid, w, known_pairs=[(2, 9)])["loss"]
    swapped = fn(p, a, pid, aid, w, known_pairs=[(2, 9)])["loss"]
    assert forward.item() == pytest.approx(swapped.item(), abs=1e-12)


def test_weights_give_a_weighted_mean_over_rows():
    a, p, _ = batch()
    ids = torch.arange(4)
    fn = loss_fn()
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    only_row2 = fn(a, p, ids, ids + 10, one_hot)["loss"].item()
    assert only_row2 == pytest.approx(reference(a, p, one_hot, 20.0).item(), abs=1e-12)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert fn(a, p, ids, ids + 10, w)["loss"].item() == pytest.approx(
        fn(a, p, ids, ids + 10, 10 * w)["loss"].item(), abs=1e-12)  # scale-free
    unweighted = fn(a, p, ids, ids + 10)["loss"].item()
    assert unweighted == pytest.approx(reference(a, p, torch.ones(4, dtype=torch.float64), 20.0).item(), abs=1e-12)
    assert unweighted != pytest.approx(fn(a, p, ids, ids + 10, w)["loss"].item(), abs=1e-6)


def test_temperature_starts_at_20_is_learnable_and_clamped_at_100():
    fn = InfoNCELoss()
    assert fn.log_scale.requires_grad and fn.logit_scale.item() == pytest.approx(20.0)
    a, p, _ = batch()
    a, p = a.float(), p.float()
    ids = torch.arange(4)
    out = fn(a, p, ids, ids + 10)
    assert out["logit_scale"].item() == pytest.approx(20.0)
    out["loss"].backward()
    assert fn.log_scale.grad is not None and fn.log_scale.grad.abs() > 0
    before = fn.log_scale.item()
    torch.optim.SGD(fn.parameters(), lr=0.1).step()
    assert fn.log_scale.item() != before

    fn.log_scale.data.fill_(math.log(300.0))
    fn.log_scale.grad = None
    out = fn(a, p, ids, ids + 10)
    assert out["logit_scale"].item() == pytest.approx(100.0)
    out["loss"].backward()
    assert fn.log_scale.grad.item() == 0.0  # clamped: no push further out

    frozen = InfoNCELoss(init_scale=10.0, learn_scale=False)
    assert not frozen.log_scale.requires_grad and frozen.logit_scale.item() == pytest.approx(10.0)


def test_gradient_matches_finite_differences():
    a, p, w = batch(n=5)
    aid, pid = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([5, 6, 0, 7, 6])  # a repeated pair
    fn = loss_fn()

    a_ = a.clone().requires_grad_(True)
    p_ = p.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, y: fn(x, y, aid, pid, w, known_pairs=[(3, 0)])["loss"], (a_, p_), eps=1e-6, atol=1e-7)
    # The temperature's gradient against a central difference.
    fn.log_scale.grad = None
    fn(a, p, aid, pid, w, known_pairs=[(3, 0)])["loss"].backward()
    analytic = fn.log_scale.grad.item()
    h = 1e-6
    vals = []
    for s in (math.log(20.0) + h, math.log(20.0) - h):
        fn.log_scale.data.fill_(s)
        vals.append(fn(a, p, aid, pid, w, known_pairs=[(3, 0)])["loss"].item())
    assert analytic == pytest.approx((vals[0] - vals[1]) / (2 * h), rel=1e-6, abs=1e-9)


def test_local_global_and_gather_options_agree_in_one_process():
    a, p, w = batch(n=6)
    aid, pid = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([6, 6, 0, 7, 8, 9])
    results = []
    for local in (True, False):
        for with_grad in (True, False):
            a_ = a.clone().requires_grad_(True)
            out = loss_fn(local_loss=local, gather_with_grad=with_grad)(a_, p, aid, pid, w)
            out["loss"].backward()
            results.append((out["loss"].item(), a_.grad))
    for loss, grad in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=1e-12)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=1e-12)


def test_accuracy_is_one_for_perfectly_aligned_pairs_and_weighted():
    e = torch.eye(4, dtype=torch.float64)
    ids = torch.arange(4)
    out = loss_fn()(e, e, ids, ids + 10)
    assert out["accuracy"].item() == 1.0
    # Row 0's positive is swapped with row 1's: both rows miss in both directions.
    p = e[[1, 0, 2, 3]]
    w = torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    assert loss_fn()(e, p, ids, ids + 10, w)["accuracy"].item() == pytest.approx(6 / 8)


def test_bfloat16_embeddings_give_a_float32_loss():
    a, p, _ = batch()
    ids = torch.arange(4)
    out = InfoNCELoss()(a.bfloat16(), p.bfloat16(), ids, ids + 10)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_bad_shapes_and_ids_are_rejected():
    a, p, _ = batch()
    with pytest.raises(ValueError, match="ids"):
        InfoNCELoss()(a, p, torch.arange(3), torch.arange(4))
    with pytest.raises(ValueError, match=r"2\*\*31"):
        encode_pairs([(-1, 3)])
    with pytest.raises(ValueError, match="init_scale"):
        InfoNCELoss(init_scale=200.0)


# --- hard negatives and Matryoshka dims -----------------------------------------------------
# Hard negatives 7 (a plain negative), 5 (row 0's and row 1's positive again), 3 (row 3's own
# anchor) and 9 (a known pair of anchor 2): a2p columns 4..7 after the four positives.
NID = torch.tensor([7, 5, 3, 9])
HN_MASKED_A2P = DUP_A2P | {(0, 5), (1, 5), (3, 6), (2, 7)}


def reference_with_negatives(a, p, n, w, scale, masked_a2p, masked_p2a):
    a, p, n = (x / x.norm(dim=1, keepdim=True) for x in (a, p, n))
    columns = torch.cat([p, n])
    total = 0.0
    for q, k, masked in ((a, columns, masked_a2p), (p, a, masked_p2a)):
        for i in range(len(q)):
            terms = [scale * q[i] @ k[j] for j in range(len(k)) if (i, j) not in masked]
            total = total + w[i] * (torch.logsumexp(torch.stack(terms), 0) - scale * q[i] @ k[i])
    return total / (2 * w.sum())


def test_hard_negatives_are_extra_anchor_columns_masked_like_in_batch_ones():
    a, p, w = batch()
    n = batch(seed=1)[0]
    s = 2.0
    out = loss_fn(init_scale=s)(a, p, AID, PID, w, known_pairs=[(2, 9)], negative_emb=n, negative_ids=NID)
    want = reference_with_negatives(a, p, n, w, s, HN_MASKED_A2P, DUP_P2A)
    assert out["loss"].item() == pytest.approx(want.item(), abs=1e-12)
    # Without the known pair, column 7 counts for row 2: false-negative masking is what removed it.
    unmasked = loss_fn(init_scale=s)(a, p, AID, PID, w, negative_emb=n, negative_ids=NID)["loss"].item()
    assert unmasked == pytest.approx(reference_with_negatives(a, p, n, w, s, HN_MASKED_A2P - {(2, 7)},
                                                              DUP_P2A).item(), abs=1e-12)
    assert abs(unmasked - out["loss"].item()) > 1e-3
    # No negatives at all (an empty list on this rank) is the in-batch loss.
    empty = loss_fn(init_scale=s)(a, p, AID, PID, w, negative_emb=n[:0], negative_ids=NID[:0])["loss"]
    assert empty.item() == pytest.approx(loss_fn(init_scale=s)(a, p, AID, PID, w)["loss"].item(), abs=1e-12)


def test_matryoshka_loss_is_the_mean_over_renormalised_prefixes():
    a, p, w = batch(d=6)
    n = batch(seed=2, d=6)[0]
    ids = torch.arange(4)
    got = loss_fn(matryoshka_dims=[6, 4, 2])(a, p, ids, ids + 10, w, negative_emb=n, negative_ids=ids + 20)
    parts = [loss_fn()(a[:, :d], p[:, :d], ids, ids + 10, w, negative_emb=n[:, :d], negative_ids=ids + 20)["loss"]
             for d in (6, 4, 2)]
    assert got["loss"].item() == pytest.approx(float(sum(parts) / 3), abs=1e-12)
    assert got["accuracy"].item() == loss_fn()(a, p, ids, ids + 10, w, negative_emb=n,
                                                negative_ids=ids + 20)["accuracy"].item()
    with pytest.raises(ValueError, match="matryoshka_dims"):
        InfoNCELoss(matryoshka_dims=[8, 0])
