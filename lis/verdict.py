"""A verdict a practitioner can act on, from LIS intervals and each table's own ceiling.

A table is bounded only by the builder whose pairs trained it (its manifest's ``builder``, see
:func:`ceiling_for`); the verdict judges the best-scoring table (highest AIS AUC gain) against
that ceiling. Codes (AUC gains; thresholds are arguments):

* ``no_headroom``     — no builder's LIS interval lies above 0 and no table beats it: the
  preference data carries no measurable signal for this ranker; build better pairs first.
* ``headroom``        — a builder has headroom but no embedding table was scored yet.
* ``exceeds_ceiling`` — the table's AIS interval lies entirely above its builder's LIS interval:
  the table carries information these pairs lack (it was not trained on them alone, or the
  builder's options starve the ceiling). eta is not a share of anything here and is not quoted.
* ``model_bound``     — eta = AIS/LIS below ``model_bound_below`` (default 0.5): the data is good,
  the model (backbone, recipe, epochs) is the bottleneck.
* ``data_bound``      — eta between the two thresholds: more gain needs better preference data
  more than more training.
* ``near_ceiling``    — eta at or above ``near_ceiling_above`` (default 0.9), intervals overlapping.
"""
from __future__ import annotations

ADVICE = {
    "no_headroom": "The preference data has no measurable headroom for this ranker (LIS interval includes 0): "
    "build better pairs before training any model.",
    "headroom": "The preference data has headroom: train on the pairs of builder '{builder}' and score the checkpoints "
    "with AIS.",
    "exceeds_ceiling": "Table '{table}' gains more (AIS {ais:+.4f}) than the ceiling of builder '{builder}' "
    "(LIS {lis:+.4f}), beyond both intervals: it carries information these pairs lack (it was not trained on "
    "them alone, or the builder's options starve the ceiling). Compare it with a builder that explains it.",
    "model_bound": "The data is good but the model reaches eta {eta:.2f} of builder '{builder}''s ceiling: improve "
    "the model (backbone, LoRA targets, epochs, learning rate) before collecting more data.",
    "data_bound": "The model reaches eta {eta:.2f} of builder '{builder}''s ceiling: further gains need better "
    "preference data more than more training.",
    "near_ceiling": "The model reaches eta {eta:.2f} of builder '{builder}''s ceiling: it is near what this "
    "preference data can deliver; only better data raises the ceiling.",
}

NULL_CONTROLS = ("random",)


def has_headroom(lis: dict) -> bool:
    """A LIS whose interval lies above 0 (never merely 'excludes 0': noise can be slightly negative)."""
    return lis["auc_gain_ci"][0] > 0.0 and lis["auc_gain"] > 0.0


def best_builder(lis: dict) -> str | None:
    """The builder with the highest LIS whose interval lies above 0 (the null control ``random``
    never counts); None when there is none."""
    usable = [name for name, s in lis.items() if has_headroom(s) and name not in NULL_CONTROLS]
    return max(usable, key=lambda name: lis[name]["auc_gain"]) if usable else None


def ceiling_for(manifest: dict, lis: dict) -> tuple[str | None, str]:
    """(builder, source) of a table's ceiling: its manifest's ``builder`` (source ``manifest``),
    else the best builder with headroom among those scored (source ``best_builder``: a table of
    unknown provenance is compared with the best pairs we know), else (None, ``none``)."""
    named = (manifest or {}).get("builder")
    if named:
        return str(named), "manifest"
    fallback = best_builder(lis)
    return (fallback, "best_builder") if fallback else (None, "none")


def relation(ais: dict, lis: dict) -> str:
    """How an AIS stands to a LIS: ``exceeds`` (AIS interval entirely above the LIS interval),
    ``no_ceiling`` (the LIS interval does not lie above 0) or ``within``."""
    if ais["auc_gain_ci"][0] > lis["auc_gain_ci"][1] and ais["auc_gain_ci"][0] > 0.0:
        return "exceeds"
    return "within" if has_headroom(lis) else "no_ceiling"


def verdict(lis: dict, ceilings: dict, ais: dict, model_bound_below: float = 0.5,
            near_ceiling_above: float = 0.9) -> dict:
    """``lis``: builder -> scores; ``ceilings``: table -> its ceiling (``builder``, ``source``,
    ``lis``, ``eta``, ``relation``; see :meth:`lis.evaluator.LISEvaluator.ceiling`); ``ais``:
    table -> scores. Judges the table with the highest AIS AUC gain against its own ceiling."""
    out = {"code": "no_headroom", "builder": None, "table": None, "eta": None, "ceiling_source": None}
    best = best_builder(lis)
    if not ais or not ceilings:
        if best is None:
            highest = max(lis, key=lambda name: lis[name]["auc_gain"]) if lis else None
            advice = ADVICE["no_headroom"] if lis else "No builder was scored."
            return out | {"builder": highest, "advice": advice}
        return out | {"code": "headroom", "builder": best, "advice": ADVICE["headroom"].format(builder=best)}
    table = max(ceilings, key=lambda name: ais[name]["auc_gain"])
    ceiling = ceilings[table]
    out |= {"table": table, "builder": ceiling["builder"], "ceiling_source": ceiling["source"]}
    if ceiling["builder"] is None or ceiling["relation"] == "no_ceiling":
        return out | {"advice": ADVICE["no_headroom"]}
    if ceiling["relation"] == "exceeds":
        return out | {"code": "exceeds_ceiling", "advice": ADVICE["exceeds_ceiling"].format(
            table=table, builder=ceiling["builder"], ais=ais[table]["auc_gain"], lis=ceiling["lis"]["auc_gain"])}
    eta = ceiling["eta"]
    if eta < model_bound_below:
        code = "model_bound"
    elif eta < near_ceiling_above:
        code = "data_bound"
    else:
        code = "near_ceiling"
    return out | {"code": code, "eta": eta, "advice": ADVICE[code].format(eta=eta, builder=ceiling["builder"])}
