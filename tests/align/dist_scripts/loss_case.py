"""A fixed small contrastive batch and encoder, shared by the distributed-loss script and test.

The global batch has 10 pairs with duplicate items (the same positive twice, an anchor that is
another pair's positive, a repeated pair), known pairs among the off-diagonal entries, and
random weights, so every masking path runs across the rank boundary. float64 throughout so the
distributed and single-process numbers agree to ~1e-12 (the test asserts 1e-9).
"""
import torch
from torch import nn

from align.loss import InfoNCELoss, encode_pairs

N, D_IN, D = 10, 6, 4
ANCHOR_IDS = [0, 1, 2, 3, 4, 5, 6, 2, 8, 9]
POSITIVE_IDS = [10, 11, 10, 12, 3, 13, 14, 10, 15, 16]  # 10 thrice, anchor 3 is positive of row 4
KNOWN = [(0, 12), (5, 16), (8, 11)]  # (anchor, positive) pairs that cross the rank boundary

# Distributed cases run by dist_loss.py: rows per rank and InfoNCELoss options.
CASES = {
    "with_grad_local": {"sizes": [5, 5], "loss": {}},
    "with_grad_global": {"sizes": [5, 5], "loss": {"local_loss": False}},
    "with_grad_unequal": {"sizes": [6, 4], "loss": {}},
    "no_grad_local": {"sizes": [5, 5], "loss": {"gather_with_grad": False}},
}


class Model(nn.Module):
    """Encoder + loss in one module, so DDP averages the temperature's gradient too."""

    def __init__(self, **loss_kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(D_IN, D, dtype=torch.float64)
        self.loss = InfoNCELoss(**loss_kwargs)
        self.loss.log_scale.data = self.loss.log_scale.data.double()

    def forward(self, xa, xp, aid, pid, w, known):
        # One encoder call for both sides: DDP expects one forward per backward.
        e = self.encoder(torch.cat([xa, xp]))
        return self.loss(e[: len(xa)], e[len(xa):], aid, pid, w, known)


def make_batch():
    g = torch.Generator().manual_seed(1)
    xa = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    xp = xa + 0.5 * torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    w = torch.rand(N, generator=g, dtype=torch.float64) + 0.5
    return xa, xp, torch.tensor(ANCHOR_IDS), torch.tensor(POSITIVE_IDS), w, encode_pairs(KNOWN)


def run(model, xa, xp, aid, pid, w, known):
    """Forward + backward; returns loss, accuracy and the gradients as plain lists."""
    xa = xa.clone().requires_grad_(True)
    xp = xp.clone().requires_grad_(True)
    out = model(xa, xp, aid, pid, w, known)
    out["loss"].backward()
    inner = getattr(model, "module", model)
    return {
        "loss": out["loss"].item(),
        "accuracy": out["accuracy"].item(),
        "grad_xa": xa.grad.tolist(),
        "grad_xp": xp.grad.tolist(),
        "grad_weight": inner.encoder.weight.grad.tolist(),
        "grad_log_scale": inner.loss.log_scale.grad.item(),
    }
