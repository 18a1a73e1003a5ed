"""Validity of LIS and AIS on the simulated platform, where the truth is known (docs/science.md
section 9). The five properties, on AUC *and* GAUC, on two seeds of the demo preset, with every
builder at its default options:

1. LIS of co_engagement falls as its leaked pairs are corrupted (0/25% above 75/100%; on AUC
   one adjacent swap at most: a 25% step is about as large as the noise); ~0 at 100%.
2. AIS of the true item latents is clearly positive; AIS of random vectors is ~0.
3. AIS of a table trained on a builder's fit-window pairs stays <= that builder's LIS.
4. Builders ranked by LIS are ranked alike by the AIS of tables trained on their past pairs
   (on GAUC only what the demo's noise resolves; see the test).
5. Probe mode and full mode order embedding tables of different quality alike.

One demo world and one evaluator per seed serve the whole module (about 2.5 minutes a seed on
one core). ``LIS_VALIDITY_SEEDS=0`` (what ``make test`` sets) runs one seed; CI runs seed 1 in
``make validity``.
Measured values are printed (run with ``-s`` to see them). Random-is-zero at >= 1M impressions
is checked by ``bench/check_validity_at_scale.py``.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.stats import spearmanr

from lis.bootstrap import paired_bootstrap
from lis.builders import corrupt_pairs
from lis.datadir import load_datadir
from lis.embeddings import EmbeddingTable, load_embeddings
from lis.evaluator import EvaluatorConfig, LISEvaluator
from lis.synth import simulate

pytestmark = pytest.mark.slow

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
METRICS = ("auc", "gauc")
BUILDERS = ("co_engagement", "category", "ranker_knn", "co_engagement_50", "random")


# Both seeds by default; `make test` runs seed 0 and CI's `make validity` seed 1 (LIS_VALIDITY_SEEDS),
# so that the suite stays within 15 minutes on 2 cores and CI still checks both seeds.
SEEDS = [int(seed) for seed in os.environ.get("LIS_VALIDITY_SEEDS", "0,1").split(",") if seed.strip()]


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{seed}" for seed in SEEDS])
def world(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("validity") / f"demo{request.param}"
    simulate("demo", request.param, root, progress=False)
    data = load_datadir(root, check_images=False)
    # The evaluator's default 600 oracle steps: with 300, the random-pairs oracle of seed 0 was
    # not yet noise (AUC gain -0.0025 [-0.0042, -0.0010]); with 600 it is (-0.0006 [-0.0018, +0.0004]).
    config = EvaluatorConfig(seed=request.param)
    evaluator = LISEvaluator(data.log, data.catalogue, config, name=f"demo seed {request.param}")
    items = data.catalogue["item_id"].astype(str).to_numpy()
    return {"seed": request.param, "evaluator": evaluator, "truth": load_embeddings(root / "truth.safetensors"),
            "items": items, "past": {}, "curve": None}


def corrupter(fraction: float, item_ids):
    """A transform replacing ``fraction`` of each pair set's positives by random catalogue items.

    The seed is fixed per fold, so the damage is nested across fractions (corrupt_pairs)."""
    def transform(pairs, fold):
        return corrupt_pairs(pairs, fraction, item_ids, seed=101 + (fold or 0))
    return transform


def corruption_curve(world) -> dict:
    """LIS of co_engagement with 0..100% of its leaked pairs corrupted (memoised per world)."""
    if world["curve"] is None:
        ev = world["evaluator"]
        world["curve"] = {f: ev.lis("co_engagement", transform=corrupter(f, world["items"]), return_scores=True)
                          for f in FRACTIONS}
    return world["curve"]


def past_ais(world, name: str) -> dict:
    """AIS (with probe scores) of a table fitted to the fit-window pairs of a builder;
    ``co_engagement_50`` is co_engagement with half its pairs corrupted. Memoised per world."""
    if name not in world["past"]:
        ev = world["evaluator"]
        if name == "co_engagement_50":
            table = ev.past_table("co_engagement", transform=corrupter(0.5, world["items"]))
        else:
            table = ev.past_table(name)
        world["past"][name] = ev.score_table(table, f"past_{name}", return_scores=True)
    return world["past"][name]


def lis_of(world, name: str) -> dict:
    return corruption_curve(world)[0.5] if name == "co_engagement_50" else world["evaluator"].lis(name, return_scores=True)


def _fmt(scores: dict, metric: str = "auc") -> str:
    lo, hi = scores[f"{metric}_gain_ci"]
    return f"{scores[f'{metric}_gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


# ------------------------------------------------------------------------------ property 1
@pytest.mark.parametrize("metric", METRICS)
def test_lis_falls_as_pairs_are_corrupted(world, metric):
    curve = corruption_curve(world)
    gains = [curve[f][f"{metric}_gain"] for f in FRACTIONS]
    print(f"\nseed {world['seed']} {metric.upper()} LIS co_engagement by corrupted share:",
          ", ".join(f"{f:.0%} {_fmt(curve[f], metric)}" for f in FRACTIONS))
    assert curve[0.0][f"{metric}_gain_ci"][0] > 0.0, "clean pairs must have headroom to lose"
    # The curve falls: the lightly damaged half lies above the heavily damaged end. Adjacent
    # 25% steps differ by about their noise on ~100k impressions (strict order failed by
    # 0.0004 on AUC, seed 1; on GAUC once per seed, up to 0.0028), so strict order is printed,
    # not asserted; on AUC at most one adjacent swap (Spearman <= -0.9).
    assert min(gains[:2]) > max(gains[3:]), f"LIS does not fall with the corruption: {gains}"
    if metric == "auc":
        rho = spearmanr(FRACTIONS, gains).statistic
        assert rho <= -0.9 + 1e-9, f"AUC LIS does not fall with the corruption: {gains} (Spearman {rho:.2f})"
    lo, hi = curve[1.0][f"{metric}_gain_ci"]
    assert lo <= 0.0 <= hi, f"fully corrupted pairs still show headroom: [{lo}, {hi}]"


# ------------------------------------------------------------------------------ property 2
def test_ais_of_true_latents_is_positive_and_of_random_vectors_is_zero(world):
    ev, truth = world["evaluator"], world["truth"]
    rng = np.random.default_rng(7)
    random = EmbeddingTable(truth.ids, rng.normal(size=truth.vectors.shape).astype(np.float32), {})
    truth_ais, random_ais = ev.score_table(truth, "truth"), ev.score_table(random, "random")
    for metric in METRICS:
        print(f"\nseed {world['seed']} {metric.upper()} AIS truth {_fmt(truth_ais, metric)}, random {_fmt(random_ais, metric)}")
        assert truth_ais[f"{metric}_gain_ci"][0] > 0.03      # measured 0.047-0.065 (truth gains 0.06-0.075)
        lo, hi = random_ais[f"{metric}_gain_ci"]
        assert lo <= 0.0 <= hi and abs(random_ais[f"{metric}_gain"]) < 0.005
    assert truth_ais["coverage"] == 1.0


# ------------------------------------------------------------------------------ property 3
@pytest.mark.parametrize("builder", ["co_engagement", "ranker_knn"])
def test_ais_of_a_table_trained_on_past_pairs_stays_below_lis(world, builder):
    ev = world["evaluator"]
    lis, past = lis_of(world, builder), past_ais(world, builder)
    test = ev.is_test
    assert past["auc_gain_ci"][0] > 0.0, "the past table must learn something, or the bound is vacuous"
    for metric, key in (("auc", "scores_with"), ("gauc", "gauc_scores_with")):
        # Paired over the same users: metric(probe with the past table) - metric(probe with the leaked oracle).
        diff = paired_bootstrap(ev.labels[test], past[key], lis[key], resamples=ev.resamples, metrics=(metric,))[metric]
        print(f"\nseed {world['seed']} {builder} {metric.upper()}: LIS {_fmt(lis, metric)}, past-table AIS "
              f"{_fmt(past, metric)}, AIS - LIS {diff['gain']:+.4f} [{diff['gain_ci'][0]:+.4f}, {diff['gain_ci'][1]:+.4f}]")
        assert past[f"{metric}_gain"] <= lis[f"{metric}_gain_ci"][1]
        assert diff["gain_ci"][0] <= 0.0, "the past table beats the leaked oracle beyond the interval"


# ------------------------------------------------------------------------------ property 4
@pytest.mark.parametrize("metric", METRICS)
def test_builders_ranked_by_lis_are_ranked_alike_by_past_table_ais(world, metric):
    lis = {name: lis_of(world, name) for name in BUILDERS}
    past = {name: past_ais(world, name) for name in BUILDERS}
    rho = spearmanr([lis[n][f"{metric}_gain"] for n in BUILDERS], [past[n][f"{metric}_gain"] for n in BUILDERS]).statistic
    print(f"\nseed {world['seed']} {metric.upper()}\n"
          + "\n".join(f"{n:<18} LIS {_fmt(lis[n], metric)}  past AIS {_fmt(past[n], metric)}" for n in BUILDERS)
          + f"\nSpearman {rho:.2f}")
    if metric == "auc":
        assert rho >= 0.8 - 1e-9, f"LIS and past-table AIS rank the builders differently (Spearman {rho:.2f})"
        return
    # GAUC: the builders' gains differ by ~0.005, under the demo's GAUC noise (interval half-width
    # ~0.008), so a full ranking is noise there (Spearman 0.6 on both seeds), and on seed 1 even
    # the half-corrupted pairs' GAUC LIS came out above the clean one's (0.0125 vs 0.0097). What
    # the data resolves: clean pairs beat random ones on the ceiling, and the table trained on
    # clean pairs beats those trained on half-corrupted and random pairs.
    assert lis["co_engagement"]["gauc_gain"] > lis["random"]["gauc_gain"]
    for other in ("co_engagement_50", "random"):
        assert past["co_engagement"]["gauc_gain"] > past[other]["gauc_gain"], other


def test_default_builders_give_co_engagement_the_highest_lis(world):
    """The feed-like world's point: behaviour beats metadata, and the null control is null."""
    lis = {name: lis_of(world, name) for name in ("co_engagement", "category", "random")}
    for metric in METRICS:
        gains = {name: s[f"{metric}_gain"] for name, s in lis.items()}
        assert gains["co_engagement"] > gains["category"] > gains["random"], (metric, gains)
        lo, hi = lis["random"][f"{metric}_gain_ci"]
        assert lo <= 0.0 <= hi, (metric, lo, hi)
    assert lis["co_engagement"]["auc_gain_ci"][0] > lis["category"]["auc_gain"], "co_engagement must clearly lead"


# ------------------------------------------------------------------------------ property 5
def noisy_tables(truth: EmbeddingTable, seed: int = 3) -> dict[str, EmbeddingTable]:
    """Truth, truth + unit-norm noise at three levels, and random vectors: five known qualities, best first."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=truth.vectors.shape).astype(np.float32)
    unit = truth.vectors / np.linalg.norm(truth.vectors, axis=1, keepdims=True)
    noise_unit = noise / np.linalg.norm(noise, axis=1, keepdims=True)
    tables = {"truth": truth}
    for level in (0.5, 1.0, 2.0):
        tables[f"noise_{level}"] = EmbeddingTable(truth.ids, unit + level * noise_unit, {})
    tables["random"] = EmbeddingTable(truth.ids, noise, {})
    return tables


def test_probe_and_full_mode_order_tables_alike(world):
    ev, tables = world["evaluator"], noisy_tables(world["truth"])
    probe = {name: ev.score_table(table, name) for name, table in tables.items()}
    full = {name: ev.score_table_full(table, name) for name, table in tables.items()}
    quality = list(range(len(tables), 0, -1))
    for metric in METRICS:
        print(f"\nseed {world['seed']} {metric.upper()}\n" + "\n".join(
            f"{n:<10} probe {_fmt(probe[n], metric)}  full {_fmt(full[n], metric)}" for n in tables))
        probe_gains = [probe[n][f"{metric}_gain"] for n in tables]
        full_gains = [full[n][f"{metric}_gain"] for n in tables]
        assert spearmanr(quality, probe_gains).statistic == pytest.approx(1.0), "the tables must differ in quality"
        rho = spearmanr(probe_gains, full_gains).statistic
        assert rho >= 0.8 - 1e-9, f"probe and full mode order the tables differently on {metric} (Spearman {rho:.2f})"
        assert full["truth"][f"{metric}_gain_ci"][0] > 0.03, "full mode must see the true latents' gain too"
