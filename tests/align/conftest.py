"""Shared fixtures of the align tests: tiny VLM folders (built once per session) and a tiny catalogue."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

FAMILIES = ("qwen2_vl", "llava", "idefics3")

CATALOGUE_TEXTS = [
    "red leather shoes for running", "blue cotton shirt", "vintage wooden chair", "glass mug for the kitchen",
    "black steel watch for travel", "soft wool jacket for kids",
]


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory):
    """A data dir with ``catalogue.parquet`` and ``images/*.png``; the last item has no image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("catalogue")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(CATALOGUE_TEXTS):
        image = None
        if i < len(CATALOGUE_TEXTS) - 1:
            image = f"images/i{i}.png"
            Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(root / image)
        rows.append({"item_id": f"i{i}", "text": text, "image": image})
    pd.DataFrame(rows).to_parquet(root / "catalogue.parquet")
    return root


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_catalogue):
    """family -> folder of a saved tiny VLM whose tokenizer was trained on the tiny catalogue."""
    from align.models.tiny import build_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {}
    for family in FAMILIES:
        build_tiny_vlm(family, root / family, catalogue=tiny_catalogue)
        dirs[family] = root / family
    return dirs


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def loaded(tiny_dirs, family):
    """A freshly loaded (model, processor, family record) of the parametrised family."""
    from align.models.loading import load_vlm

    return load_vlm(str(tiny_dirs[family]))


@pytest.fixture(scope="session")
def items(tiny_catalogue):
    from align.collate import items_from_catalogue

    return items_from_catalogue(pd.read_parquet(tiny_catalogue / "catalogue.parquet"), base_dir=tiny_catalogue)


# --- training tests: a simulated tiny platform and a tiny Qwen2-VL built on its catalogue -------
@pytest.fixture(scope="module")
def one_torch_thread():
    """Other jobs share the 2 cores; more torch threads than free cores makes steps 15-50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from tests.align.train_helpers import make_data

    return make_data(tmp_path_factory.mktemp("sim_data") / "data")


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, data_dir):
    from tests.align.train_helpers import make_base_model

    return make_base_model(tmp_path_factory.mktemp("sim_base") / "qwen2_vl", data_dir)
