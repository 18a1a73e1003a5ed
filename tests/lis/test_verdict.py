"""Verdict codes, each table judged against its own ceiling; exceeding it has its own code."""
from __future__ import annotations

import pytest

from lis.verdict import best_builder, ceiling_for, relation, verdict


def _scores(gain, lo, hi):
    return {"auc_gain": gain, "auc_gain_ci": [lo, hi]}


def _ceiling(builder, lis, ais, eta=None, source="manifest"):
    rel = relation(ais, lis)
    return {"builder": builder, "source": source, "lis": lis, "relation": rel,
            "eta": eta if rel == "within" else None}


LIS = {"b": _scores(0.03, 0.01, 0.05)}


@pytest.mark.parametrize("eta, code", [(0.2, "model_bound"), (0.7, "data_bound"), (0.95, "near_ceiling")])
def test_eta_codes(eta, code):
    ais = {"t": _scores(eta * 0.03, eta * 0.03 - 0.01, eta * 0.03 + 0.01)}
    result = verdict(LIS, {"t": _ceiling("b", LIS["b"], ais["t"], eta)}, ais)
    assert result["code"] == code and result["builder"] == "b" and result["table"] == "t"
    assert result["eta"] == eta and f"eta {eta:.2f}" in result["advice"]


def test_ais_beyond_the_lis_interval_exceeds_the_ceiling_and_quotes_no_share():
    ais = {"t": _scores(0.17, 0.16, 0.18)}
    result = verdict(LIS, {"t": _ceiling("b", LIS["b"], ais["t"])}, ais)
    assert result["code"] == "exceeds_ceiling" and result["eta"] is None
    assert "%" not in result["advice"] and "carries information these pairs lack" in result["advice"]
    inside = {"t": _scores(0.06, 0.04, 0.08)}                      # above the point, inside the interval
    assert verdict(LIS, {"t": _ceiling("b", LIS["b"], inside["t"], 2.0)}, inside)["code"] == "near_ceiling"


def test_the_best_table_decides_against_its_own_builder():
    lis = {"b": _scores(0.03, 0.01, 0.05), "c": _scores(0.01, 0.005, 0.015)}
    ais = {"t": _scores(0.006, 0.001, 0.011), "u": _scores(0.02, 0.01, 0.03)}
    ceilings = {"t": _ceiling("b", lis["b"], ais["t"], 0.2), "u": _ceiling("b", lis["b"], ais["u"], 0.67)}
    assert verdict(lis, ceilings, ais)["table"] == "u"
    assert verdict(lis, ceilings, ais)["code"] == "data_bound"


def test_no_scored_table_gives_headroom_or_no_headroom():
    assert verdict(LIS, {}, {})["code"] == "headroom"
    result = verdict({"a": _scores(0.002, -0.001, 0.005), "b": _scores(-0.001, -0.003, 0.001)}, {}, {})
    assert result["code"] == "no_headroom" and result["builder"] == "a" and "build better pairs" in result["advice"]
    assert verdict({}, {}, {})["code"] == "no_headroom"


def test_a_table_whose_builder_has_no_headroom():
    lis = {"b": _scores(0.001, -0.002, 0.004)}
    weak = {"t": _scores(0.001, -0.001, 0.003)}
    assert verdict(lis, {"t": _ceiling("b", lis["b"], weak["t"])}, weak)["code"] == "no_headroom"
    strong = {"t": _scores(0.05, 0.04, 0.06)}
    assert verdict(lis, {"t": _ceiling("b", lis["b"], strong["t"])}, strong)["code"] == "exceeds_ceiling"


def test_ceiling_comes_from_the_manifest_else_the_best_builder():
    lis = {"co_engagement": _scores(0.04, 0.03, 0.05), "category": _scores(0.03, 0.02, 0.04),
           "random": _scores(0.05, 0.04, 0.06)}
    assert ceiling_for({"builder": "category"}, lis) == ("category", "manifest")
    assert ceiling_for({}, lis) == ("co_engagement", "best_builder")       # random never counts
    assert best_builder({"random": _scores(0.05, 0.04, 0.06)}) is None
    assert ceiling_for({}, {"random": _scores(0.05, 0.04, 0.06)}) == (None, "none")
