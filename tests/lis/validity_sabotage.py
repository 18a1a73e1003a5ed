"""A pytest plugin that breaks a validity property on purpose, to show tests/lis/test_validity.py
notices (a test that cannot fail proves nothing). Not loaded unless asked for:

    SABOTAGE=leaky_probe .venv/bin/python -m pytest -p tests.lis.validity_sabotage -k seed0 tests/lis/test_validity.py

SABOTAGE holds one or more of these names (comma-separated); the tests of the property each
breaks must fail (measured on seed 0 in docs/science.md, section 9):

leaky_probe   the AIS probe sees the label of the impression (a leak): random vectors gain.
weak_oracle   LIS's leaked oracle is trained on fully corrupted pairs: LIS ~ 0 below past-table AIS.
deaf_corrupt  corruption no longer changes the pairs: the LIS curve does not fall.
full_reversed full mode returns the negated gain of each table: probe and full disagree.
builders_swap co_engagement and category pairs swapped: metadata 'beats' behaviour.
"""
import os

import pytest

WHICH = os.environ.get("SABOTAGE", "")


@pytest.fixture(autouse=True)
def _sabotage(monkeypatch, request):
    import lis.evaluator as E
    V = request.module  # the test module as pytest imported it (its own name, not tests.lis...)

    if "leaky_probe" in WHICH:
        original = E.LISEvaluator.table_features

        def leaky(self, table, present=None):
            phi, controls = original(self, table, present)
            phi = phi.copy()
            phi[:, 0] += 0.3 * (self.labels - self.labels.mean())
            return phi, controls
        monkeypatch.setattr(E.LISEvaluator, "table_features", leaky)
    if "weak_oracle" in WHICH:
        original_tables = E.LISEvaluator.oracle_tables

        def weak(self, builder, transform=None, **options):
            items = self.catalogue["item_id"].astype(str).to_numpy()
            return original_tables(self, builder, transform=V.corrupter(1.0, items), **options)
        monkeypatch.setattr(E.LISEvaluator, "oracle_tables", weak)
    if "deaf_corrupt" in WHICH:
        monkeypatch.setattr(V, "corrupt_pairs", lambda pairs, fraction, items, seed=0: pairs)
    if "full_reversed" in WHICH:
        original_full = E.LISEvaluator.score_table_full

        def reversed_full(self, table, name="table", return_scores=False):
            out = dict(original_full(self, table, name, return_scores))
            for m in ("auc", "gauc"):
                out[f"{m}_gain"] = -out[f"{m}_gain"]
            return out
        monkeypatch.setattr(E.LISEvaluator, "score_table_full", reversed_full)
    if "builders_swap" in WHICH:
        original_pairs = E.LISEvaluator.builder_pairs
        swap = {"co_engagement": "category", "category": "co_engagement"}

        def swapped(self, builder, log_slice, **options):
            return original_pairs(self, swap.get(builder, builder), log_slice)
        monkeypatch.setattr(E.LISEvaluator, "builder_pairs", swapped)
    yield
