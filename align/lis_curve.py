"""The LIS curve of a training run: ``lis_curve.png``.

Left panel: AIS (AUC gain) of every scored checkpoint with its 95% interval, the LIS ceiling of
the training builder with its interval, ``eval_loss`` on a second axis, the best step and the
step where training stopped early. Right panel: eta = AIS / LIS (n/a while the LIS interval
includes 0).
"""
from __future__ import annotations

import math

import numpy as np


def eval_loss_points(log_history: list[dict]) -> list[tuple[int, float]]:
    """``(step, eval_loss)`` of Trainer's evaluations (``state.log_history``)."""
    return [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]


def write_curve(history: list[dict], lis: dict, png_path, best_step: int | None = None, builder: str = "",
                eval_loss: list[tuple[int, float]] | None = None, stop_step: int | None = None) -> None:
    """PNG of AIS (with intervals), eval_loss and eta against step; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lis.atomic import atomic_path

    history = sorted(history, key=lambda h: h["step"])
    steps = np.array([h["step"] for h in history])
    ais = np.array([h["eval_ais_auc"] for h in history])
    lo = np.array([h["eval_ais_auc_lo"] for h in history])
    hi = np.array([h["eval_ais_auc_hi"] for h in history])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    left.fill_between(steps, lo, hi, alpha=0.25, color="tab:orange", label="AIS 95% interval")
    left.plot(steps, ais, marker="o", color="tab:orange", label="AIS (AUC gain)")
    left.axhline(lis["auc_gain"], color="tab:blue", linestyle="--", label=f"LIS ceiling ({builder})")
    left.axhspan(*lis["auc_gain_ci"], color="tab:blue", alpha=0.12)
    left.axhline(0.0, color="black", linewidth=0.8)
    if best_step is not None:
        left.axvline(best_step, color="tab:green", linestyle=":", linewidth=1.5, label=f"best step {best_step}")
    if stop_step is not None:
        left.axvline(stop_step, color="tab:red", linestyle="-.", linewidth=1.2, label=f"early stop at {stop_step}")
    left.set_xlabel("step")
    left.set_ylabel("AUC gain over the base ranker")
    left.set_title("AIS against the LIS ceiling", fontsize=10)
    handles, labels = left.get_legend_handles_labels()
    if eval_loss:
        twin = left.twinx()
        loss_steps, losses = zip(*sorted(eval_loss))
        line, = twin.plot(loss_steps, losses, color="tab:gray", linewidth=1, marker=".", label="eval_loss")
        twin.set_ylabel("eval_loss (held-out pairs)", color="tab:gray")
        handles, labels = handles + [line], labels + ["eval_loss"]
    left.legend(handles, labels, fontsize=7, loc="lower right")
    eta = np.array([h.get("eval_lis_efficiency", math.nan) for h in history], dtype=float)
    right.plot(steps, eta, marker="o", color="tab:green")
    right.axhline(1.0, color="tab:blue", linestyle="--", linewidth=1)
    right.set_xlabel("step")
    right.set_ylabel("eta = AIS / LIS")
    right.set_title("efficiency" + ("" if np.isfinite(eta).any() else " (n/a: LIS interval includes 0)"), fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
