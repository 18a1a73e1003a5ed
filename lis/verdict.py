"""A verdict a practitioner can act on, from LIS intervals and efficiencies.

Rules (AUC gains; thresholds are arguments):
* ``no_headroom``  — the best builder's LIS interval includes 0: the preference data carries no
  measurable signal for this ranker; build better pairs before training anything.
* ``headroom``     — LIS excludes 0 but no embedding table was scored yet.
* ``model_bound``  — eta = AIS/LIS below ``model_bound_below`` (default 0.5): the data is good,
  the model (backbone, recipe, epochs) is the bottleneck.
* ``data_bound``   — eta between the two thresholds: the model reaches a fair share of the
  ceiling; more gain needs better preference data more than more training.
* ``near_ceiling`` — eta at or above ``near_ceiling_above`` (default 0.9).
"""
from __future__ import annotations

ADVICE = {
    "no_headroom": "The preference data has no measurable headroom for this ranker (LIS interval includes 0): "
    "build better pairs before training any model.",
    "headroom": "The preference data has headroom: train on the pairs of builder '{builder}' and score the checkpoints with AIS.",
    "model_bound": "The data is good but the model reaches only {eta:.0%} of its ceiling: improve the model "
    "(backbone, LoRA targets, epochs, learning rate) before collecting more data.",
    "data_bound": "The model reaches {eta:.0%} of the data's ceiling: further gains need better preference data "
    "more than more training.",
    "near_ceiling": "The model reaches {eta:.0%} of the data's ceiling: it is near what this preference data can "
    "deliver; only better data raises the ceiling.",
}


NULL_CONTROLS = ("random",)


def best_builder(lis: dict) -> str | None:
    """The builder with the highest LIS whose interval lies above 0 (the null control ``random``
    never counts); None when there is none."""
    usable = [name for name, s in lis.items() if s["auc_gain_ci"][0] > 0.0 and name not in NULL_CONTROLS]
    return max(usable, key=lambda name: lis[name]["auc_gain"]) if usable else None


def verdict(lis: dict, efficiency: dict, model_bound_below: float = 0.5, near_ceiling_above: float = 0.9) -> dict:
    """``lis``: builder -> scores with ``auc_gain`` and ``auc_gain_ci``; ``efficiency``: table -> builder -> eta|None."""
    if not lis:
        return {"code": "no_headroom", "builder": None, "table": None, "eta": None, "advice": "No builder was scored."}
    builder = best_builder(lis)
    if builder is None:
        highest = max(lis, key=lambda name: lis[name]["auc_gain"])
        return {"code": "no_headroom", "builder": highest, "table": None, "eta": None, "advice": ADVICE["no_headroom"]}
    scored = [(table, etas.get(builder)) for table, etas in efficiency.items() if etas.get(builder) is not None]
    if not scored:
        return {"code": "headroom", "builder": builder, "table": None, "eta": None,
                "advice": ADVICE["headroom"].format(builder=builder)}
    table, eta = max(scored, key=lambda pair: pair[1])
    if eta < model_bound_below:
        code = "model_bound"
    elif eta < near_ceiling_above:
        code = "data_bound"
    else:
        code = "near_ceiling"
    return {"code": code, "builder": builder, "table": table, "eta": eta, "advice": ADVICE[code].format(eta=eta)}
