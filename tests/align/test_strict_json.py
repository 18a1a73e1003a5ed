"""align/strict_json.py: null for NaN/inf at any depth, plain numbers for numpy, no object reprs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from align import strict_json


def test_non_finite_numbers_become_null_at_any_depth():
    value = {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": (np.float32("nan"), 2)}
    text = strict_json.dumps(value)
    assert json.loads(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": [None, 2]}
    assert "NaN" not in text and "Infinity" not in text


def test_numpy_values_become_plain_numbers_and_objects_are_refused(tmp_path):
    assert json.loads(strict_json.dumps({"n": np.int64(3), "v": np.array([0.5, np.nan])})) == {"n": 3, "v": [0.5, None]}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        strict_json.dumps({"callback": object()})
    strict_json.write(tmp_path / "x.json", {"eta": float("nan")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"eta": None}
