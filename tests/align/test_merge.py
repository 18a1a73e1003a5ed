"""Merged export: the adapter folded into the base weights, loadable by transformers without peft.

Reuses test_export's tiny Qwen2-VL and random 'trained' adapter (LoRA B and head drawn at random).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from align.cli import main
from align.export import export_embeddings
from lis.embeddings import load_embeddings
from tests.align.test_export import cosine_rows, data_dir, items, model_dir, trained  # noqa: F401 (fixtures)


def test_merged_folder_loads_without_peft_and_embeds_like_the_adapter(trained, items, data_dir, model_dir,  # noqa: F811
                                                                       tmp_path, capsys, monkeypatch):
    embedder, batcher, best = trained
    out, merged = tmp_path / "emb.safetensors", tmp_path / "merged"
    assert main(["export", "--model", str(model_dir), "--adapter", str(best), "--data", str(data_dir),
                 "--out", str(out), "--merged", str(merged), "--dim", "16", "--no-progress"]) == 0
    assert "merged model ->" in capsys.readouterr().out
    names = {p.name for p in merged.iterdir()}
    assert "config.json" in names and any(n.endswith(".safetensors") and "model" in n for n in names)
    assert "adapter_config.json" not in names and "projection_head.safetensors" in names
    assert not (tmp_path / "merged.tmp").exists()

    # transformers alone: importing peft now fails.
    monkeypatch.setitem(sys.modules, "peft", None)
    from align.embedder import ItemEmbedder
    from align.models.loading import load_vlm

    model, _, family = load_vlm(str(merged))
    assert not any("lora" in name for name, _ in model.named_parameters())
    plain = ItemEmbedder(model, family, dim=32, pooling="mean").load_head(merged).eval()
    want = export_embeddings(embedder, batcher, items, progress=False).vectors
    got = export_embeddings(plain, batcher, items, progress=False).vectors
    assert cosine_rows(got, want).min() >= 0.999
    # Without the merge the base model is far from the adapter: the check can fail.
    monkeypatch.delitem(sys.modules, "peft")
    base, _, _ = load_vlm(str(model_dir))
    unmerged = ItemEmbedder(base, family, dim=32, pooling="mean").load_head(best).eval()
    assert cosine_rows(export_embeddings(unmerged, batcher, items, progress=False).vectors, want).min() < 0.99

    # --dim 16: the first 16 coordinates, re-normalised.
    table = load_embeddings(out)
    assert table.dim == 16 and table.manifest["dim"] == 16
    prefix = want[:, :16] / np.linalg.norm(want[:, :16], axis=1, keepdims=True)
    assert cosine_rows(table.vectors, prefix).min() >= 0.9999
    assert np.allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-5)


def test_a_merge_that_does_not_reproduce_the_adapter_is_refused(trained, data_dir, model_dir, tmp_path,  # noqa: F811
                                                                 capsys, monkeypatch):
    import align.merge

    _, _, best = trained
    monkeypatch.setattr(align.merge, "merge_adapter", lambda model: model.unload())  # drops the adapter
    merged = tmp_path / "merged"
    assert main(["export", "--model", str(model_dir), "--adapter", str(best), "--data", str(data_dir),
                 "--merged", str(merged), "--no-progress"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers' progress bars come before it)
    assert "does not reproduce the adapter's embeddings" in last and "min -0." in last or "min 0." in last
    assert not merged.exists() and not (tmp_path / "merged.tmp").exists()


@pytest.mark.parametrize("extra,message", [([], "--out: required"), (["--merged", "m", "--dim", "0", "--out", "e"],
                                                                      "--dim: must be a positive integer")])
def test_bad_merged_or_dim_arguments_exit_2(extra, message, data_dir, model_dir, trained, tmp_path, capsys):  # noqa: F811
    args = ["export", "--model", str(model_dir), "--data", str(data_dir), "--adapter", str(trained[2]),
            *[str(tmp_path / a) if a in ("m", "e") else a for a in extra]]
    assert main(args) == 2
    assert message in capsys.readouterr().err
