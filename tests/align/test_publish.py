"""Publishing: the folder, the card, the verification that refuses, and the upload to a Hub TEST DOUBLE.

The run folder is built like the trainer builds it, from a real tiny Qwen2-VL with a LoRA
adapter whose weights are random (so the adapter changes the embeddings and tampering shows).
Uploads go to :mod:`hub_double` (an in-process HTTP server on 127.0.0.1), never to the Hub.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from align.cli import main
from align.model_card import best_scores, render_card
from align.publish import assemble, publish, verify
from hub_double import HubDouble
from lis.errors import DataError

FAKE_TOKEN = "hf_TESTDOUBLEtoken0123456789abcdefXYZ"
EXPECTED = {"adapter_model.safetensors", "adapter_config.json", "projection_head.safetensors", "projection_head.json",
            "processor_config.json", "tokenizer.json", "tokenizer_config.json", "lis_report.json", "lis_curve.png",
            "lis_report.md", "lis_align.json", "README.md"}
HUB_BASE = "lis-align/tiny-qwen2-vl"

REPORT = {
    "base": {"auc": 0.61, "gauc": 0.58, "source": "builtin"},
    "windows": {"fit": {"from": "2024-01-01", "to": "2024-02-01", "rows": 7000, "positives": 700},
                "eval": {"from": "2024-02-01", "to": "2024-02-15", "rows": 3000, "positives": 300}},
    "lis": {"co_engagement": {"n_pairs": 900, "auc_gain": 0.040, "auc_gain_ci": [0.031, 0.049],
                              "gauc_gain": 0.030, "gauc_gain_ci": [0.020, 0.040]},
            "random": {"n_pairs": 900, "auc_gain": 0.001, "auc_gain_ci": [-0.002, 0.004],
                       "gauc_gain": 0.0, "gauc_gain_ci": [-0.003, 0.003]}},
    "ais": {"step_40": {"coverage": 1.0, "auc_gain": 0.022, "auc_gain_ci": [0.015, 0.029],
                        "gauc_gain": 0.017, "gauc_gain_ci": [0.010, 0.024],
                        "ceiling": {"builder": "co_engagement", "source": "manifest", "options": None,
                                    "lis": {"auc_gain": 0.040, "auc_gain_ci": [0.031, 0.049]},
                                    "relation": "within", "eta": 0.55, "eta_ci": [0.31, 0.94]}}},
    # the full table x builder matrix: not what the card reads (random is not this table's builder)
    "efficiency": {"step_40": {"co_engagement": 0.55, "random": 22.0}},
    "verdict": {"code": "data_bound", "advice": "The model reaches eta 0.55 of builder 'co_engagement''s ceiling: "
                                                "further gains need better preference data."},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_catalogue):
    """RUN_DIR as the trainer writes it (see align/publish.py), plus files that must never be published."""
    from PIL import Image

    from align.collate import ItemBatcher, items_from_catalogue
    from align.embedder import ItemEmbedder
    from align.lora import apply_lora
    from align.models.loading import load_vlm
    from align.models.tiny import build_tiny_vlm
    from lis.embeddings import EmbeddingTable, make_manifest, save_embeddings

    root = tmp_path_factory.mktemp("publish")
    base_dir, run, best = root / "base", root / "run", root / "run" / "best"
    build_tiny_vlm("qwen2_vl", base_dir, catalogue=tiny_catalogue)
    model, processor, family = load_vlm(str(base_dir))
    torch.manual_seed(0)
    peft_model = apply_lora(model, family, r=4, train_token_embeddings=True)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    embedder = ItemEmbedder(peft_model, family, dim=16, pooling="mean").eval()
    peft_model.save_pretrained(best)
    embedder.save_head(best)
    processor.save_pretrained(best)
    items = items_from_catalogue(pd.read_parquet(tiny_catalogue / "catalogue.parquet"), base_dir=tiny_catalogue)
    vectors = embedder.embed_items(items, ItemBatcher(processor, family, max_text_tokens=48, image_size=64))
    save_embeddings(best / "embeddings.safetensors", EmbeddingTable(
        [item["item_id"] for item in items], vectors.numpy(), make_manifest(16, "export", model=str(base_dir), step=40)))
    (best / "training_args.bin").write_bytes(b"pickled TrainingArguments")  # may hold hub_token: never published
    (best / "optimizer.pt").write_bytes(b"optimizer state")
    run_json = {
        "base_model": str(base_dir), "base_model_id": HUB_BASE, "family": "qwen2_vl", "best_step": 40,
        "best_metric": {"eval_ais_auc": 0.022, "eval_lis_efficiency": 0.55},
        "recipe": {"model": {"path": str(base_dir), "dtype": "float32"},
                   "data": {"max_text_tokens": 48, "image_size": 64}, "embedder": {"dim": 16, "pooling": "mean"}},
        "data": {"data_dir": str(tiny_catalogue), "builder": "co_engagement", "n_pairs": 900, "n_items": len(items),
                 "windows": REPORT["windows"]},
    }
    (run / "run.json").write_text(json.dumps(run_json))
    (run / "lis_report.json").write_text(json.dumps(REPORT))
    (run / "lis_report.md").write_text("# LIS report\n")
    Image.new("RGB", (8, 8), (0, 90, 200)).save(run / "lis_curve.png")
    (run / "evals.jsonl").write_text(json.dumps({"step": 40, "eval_ais_auc": 0.022}) + "\n")
    return run


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A private copy of the run (tests that tamper or publish write into it)."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere: not in the environment, not in a cached login."""
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def hub(monkeypatch):
    """A running Hub TEST DOUBLE; huggingface_hub's agent-registry fetch (a GET to the real Hub) is stubbed."""
    try:  # huggingface_hub >= 1.x asks the real Hub for an agent registry before its first request
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    except ImportError:
        pass
    with HubDouble() as double:
        yield double


def _card_metadata(folder: Path) -> dict:
    from huggingface_hub import ModelCard, metadata_load

    assert ModelCard((folder / "README.md").read_text()).data.library_name == "peft"
    return metadata_load(folder / "README.md")


def test_publish_sends_adapter_head_processor_report_and_card_to_the_hub(run_copy, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    rc = main(["publish", str(run_copy), "--repo-id", "someone/tiny-items", "--private", "--endpoint", hub.endpoint])
    assert rc == 0, capsys.readouterr().err
    files = hub.files("someone/tiny-items")
    assert set(files) == EXPECTED
    best = run_copy / "best"
    for name in ("adapter_model.safetensors", "projection_head.safetensors", "tokenizer.json"):
        assert files[name] == (best / name).read_bytes()
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == HUB_BASE
    assert hub.repos["someone/tiny-items"]["private"] is True
    assert hub.paths()[0] == "/api/repos/create"
    assert len(hub.commits) == 1 and hub.commits[0][1] == "main"
    assert set(hub.auth_seen) == {f"Bearer {FAKE_TOKEN}"}  # the token travelled only as the header
    assert "uploaded 12 files to someone/tiny-items" in capsys.readouterr().out


def test_token_appears_in_no_file_and_no_log_line(run_copy, hub, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # its debug lines describe every request
    monkeypatch.setattr(logging.getLogger("huggingface_hub"), "propagate", True)
    summary = publish(run_copy, "someone/tiny-items", endpoint=hub.endpoint)
    assert summary["url"].startswith(hub.endpoint)
    captured = capsys.readouterr()
    assert any("/commit/main" in r.getMessage() for r in caplog.records), "expected the Hub client's debug lines"
    requests = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Request ")]
    assert requests and all(hub.endpoint in line for line in requests)  # nothing went to the real Hub
    assert FAKE_TOKEN not in captured.out + captured.err
    assert not [r.getMessage() for r in caplog.records if FAKE_TOKEN in r.getMessage()]
    assert FAKE_TOKEN not in json.dumps(summary)
    scanned = [p for p in run_copy.rglob("*") if p.is_file()]
    assert any(p.parent.name == "publish" for p in scanned)
    assert not [p for p in scanned if FAKE_TOKEN.encode() in p.read_bytes()]
    recorded = json.dumps([(r.path, r.headers, r.body) for r in hub.requests])
    assert FAKE_TOKEN not in recorded  # not in a URL, another header or a request body


def test_card_metadata_parses_with_peft_base_model_and_model_index(run_dir, tmp_path):
    folder = assemble(run_dir, tmp_path / "out", repo_id="someone/tiny-items")
    meta = _card_metadata(folder)
    assert meta["library_name"] == "peft" and meta["base_model"] == HUB_BASE
    assert meta["pipeline_tag"] == "feature-extraction"
    assert {"lis-align", "recommendation", "item-embedding", "lora", "peft", "vision-language"} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "tiny-items"
    assert result["task"]["type"] == "feature-extraction" and result["dataset"]["name"]
    metrics = {m["type"]: m for m in result["metrics"]}
    assert metrics["ais_auc_gain"]["value"] == pytest.approx(0.022)
    assert metrics["lis_auc_gain"]["value"] == pytest.approx(0.040)
    assert metrics["lis_efficiency"]["value"] == pytest.approx(0.55)
    assert all(m["name"] for m in metrics.values())
    body = (folder / "README.md").read_text()
    assert "+0.0220 [+0.0150, +0.0290]" in body and "| random | 900 |" in body and "step 40" in body
    assert str(tmp_path) not in body and "/tmp" not in body  # no local path reaches the card


def test_card_reads_eta_from_the_tables_own_ceiling_and_never_turns_exceeding_it_into_a_percentage():
    run = {"base_model": HUB_BASE, "best_step": 40, "data": {"builder": "co_engagement", "n_pairs": 5, "n_items": 9}}
    assert best_scores(run, REPORT)["eta"] == pytest.approx(0.55)
    step = REPORT["ais"]["step_40"]
    above = {**step, "auc_gain": 0.09, "auc_gain_ci": [0.07, 0.11],
             "ceiling": {**step["ceiling"], "relation": "exceeds", "eta": None, "eta_ci": None}}
    report = {**REPORT, "ais": {"step_40": above}, "efficiency": {"step_40": {"co_engagement": 2.25}}}
    scores = best_scores(run, report)
    assert scores["eta"] is None and scores["relation"] == "exceeds"
    card = render_card(run, report)
    assert "exceeds the LIS ceiling" in card and "2.25" not in card and "lis_efficiency" not in card


def test_card_without_a_hub_base_model_omits_it_and_names_only_the_folder():
    run = {"base_model": "/home/someone/models/tiny-base", "best_step": 3,
           "data": {"data_dir": "/home/someone/data/world", "builder": "co_engagement", "n_pairs": 5, "n_items": 9}}
    card = render_card(run, REPORT)
    from huggingface_hub import ModelCard

    data = ModelCard(card).data.to_dict()
    assert "base_model" not in data and data["library_name"] == "peft"
    assert "/home/someone" not in card and "tiny-base" in card
    assert "not a Hub model" in card and "**simulated**" not in card
    run["data"]["simulated"] = True  # assemble sets it when the data dir holds synth.json
    assert "**simulated**" in render_card(run, REPORT)


def test_card_lists_the_matryoshka_dimensions_with_their_ais():
    run = {"base_model": "tiny", "best_step": 3, "recipe": {"loss": {"matryoshka_dims": [32, 128]}},
           "best_metric": {"eval_ais_auc_d128": 0.02, "eval_ais_auc_d128_lo": 0.01, "eval_ais_auc_d128_hi": 0.03,
                           "eval_ais_auc_d32": 0.015, "eval_ais_auc_d32_lo": 0.005, "eval_ais_auc_d32_hi": 0.025},
           "data": {"builder": "co_engagement"}}
    card = render_card(run, REPORT)
    assert "trained at D = 128, 32" in card and "--dim D" in card
    assert "| 128 | +0.0200 [+0.0100, +0.0300] |" in card and "| 32 | +0.0150 [+0.0050, +0.0250] |" in card
    assert "Matryoshka" not in render_card({k: v for k, v in run.items() if k != "recipe"}, REPORT)


def test_assembled_folder_holds_only_whitelisted_files(run_dir, tmp_path):
    folder = assemble(run_dir, tmp_path / "out")
    assert {p.name for p in folder.iterdir()} == EXPECTED
    assert not (tmp_path / "out.tmp").exists()


def test_assemble_with_a_missing_report_fails_and_leaves_no_folder(run_copy):
    (run_copy / "lis_report.json").unlink()
    with pytest.raises(DataError, match="lis_report.json: required file not found"):
        assemble(run_copy)
    assert not (run_copy / "publish").exists() and not (run_copy / "publish.tmp").exists()


def test_verify_accepts_the_run_and_the_card_snippet_reproduces_its_embeddings(run_dir, tmp_path, monkeypatch):
    import huggingface_hub

    from lis.embeddings import load_embeddings

    folder = assemble(run_dir, tmp_path / "out", repo_id="someone/tiny-items")
    result = verify(folder, run_dir)
    assert result["n_probe"] == 6 and result["min_cosine"] >= 0.999
    # The README's loading snippet, run as written against the folder and the local base model; its
    # example item gets the text of catalogue item i5 (which has no image) to compare with the run.
    code = (folder / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    base_model = json.loads((run_dir / "run.json").read_text())["base_model"]
    code = code.replace(f'load_vlm("{HUB_BASE}")', f"load_vlm({base_model!r})")
    code = code.replace('"red leather shoes for running"', '"soft wool jacket for kids"')
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: str(folder))
    namespace: dict = {}
    exec(compile(code, "README.md snippet", "exec"), namespace)
    table = load_embeddings(run_dir / "best" / "embeddings.safetensors")
    expected = torch.from_numpy(table.vectors[table.index_of(["i5"])])
    assert namespace["vectors"].shape == (1, 16)
    assert torch.nn.functional.cosine_similarity(namespace["vectors"], expected).item() >= 0.999


def test_tampered_adapter_is_refused_and_nothing_is_uploaded(run_copy, hub, monkeypatch):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    path = run_copy / "best" / "adapter_model.safetensors"
    weights = load_file(str(path))
    torch.manual_seed(1)
    save_file({k: v + 0.5 * torch.randn_like(v) if "lora_" in k else v for k, v in weights.items()}, str(path))
    with pytest.raises(DataError) as caught:
        publish(run_copy, "someone/tiny-items", endpoint=hub.endpoint)
    message = str(caught.value)
    assert "does not reproduce the run's best embeddings" in message and "min " in message
    assert "'i0'" in message or "'i1'" in message
    assert hub.requests == []


def test_dry_run_uploads_nothing_and_lists_the_files(run_copy, hub, no_token, capsys):
    rc = main(["publish", str(run_copy), "--repo-id", "someone/tiny-items", "--dry-run", "--endpoint", hub.endpoint])
    out = capsys.readouterr().out
    assert rc == 0 and hub.requests == []
    assert "dry run: would upload 12 files" in out and str(run_copy / "publish") in out
    assert "adapter_model.safetensors" in out and "README.md" in out


def test_missing_token_exits_2_with_one_clear_line(run_copy, hub, no_token, capsys):
    rc = main(["publish", str(run_copy), "--repo-id", "someone/tiny-items", "--endpoint", hub.endpoint])
    err = capsys.readouterr().err
    assert rc == 2 and hub.requests == []
    assert err.count("\n") == 1 and "set HF_TOKEN or run `huggingface-cli login`" in err
    assert not (run_copy / "publish").exists()  # checked before any work


def test_hub_refusal_is_a_data_error_naming_the_repo(run_copy, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(DataError, match=r"someone/tiny-items: the Hub refused the upload \(HTTP 404\)"):
        # The double answers 404 to an unknown route: point it at a path prefix it does not serve.
        publish(run_copy, "someone/tiny-items", endpoint=hub.endpoint + "/nowhere")


# ----------------------------------------------------------------------------- data.prompt, end to end
CUSTOM_PROMPT = "Item card. {image} Description: {text} -- in one word:"


def test_a_custom_prompt_survives_train_export_publish_and_reload(data_dir, base_model, tmp_path, hub, monkeypatch,
                                                                  one_torch_thread):
    """data.prompt travels: recipe -> every checkpoint -> best/ -> `lis-align export` -> the Hub folder -> reload."""
    from align.checkpoint import EMBEDDER_CONFIG, read_adapter_info
    from align.export import export_embeddings, load_export_model
    from align.models.families import DEFAULT_PROMPT
    from align.publish import load_published
    from align.train import run_training
    from lis.datadir import load_datadir
    from lis.embeddings import load_embeddings
    from tests.align.train_helpers import recipe

    run = tmp_path / "run"
    result = run_training(recipe(data_dir, base_model, run, f"data.prompt='{CUSTOM_PROMPT}'", "training.report_to=[]"))
    saved = json.loads((run / "run.json").read_text())
    assert saved["recipe"]["data"]["prompt"] == CUSTOM_PROMPT
    for folder in (run / "best", run / f"checkpoint-{result['global_step']}"):
        assert json.loads((folder / EMBEDDER_CONFIG).read_text())["batcher"]["prompt"] == CUSTOM_PROMPT, folder
    best = load_embeddings(run / "best" / "embeddings.safetensors")

    # lis-align export of best/ rebuilds the custom prompt from lis_align.json alone.
    exported = tmp_path / "exported.safetensors"
    assert main(["export", "--model", str(base_model), "--adapter", str(run / "best"), "--data", str(data_dir),
                 "--out", str(exported), "--no-progress"]) == 0
    assert cosine_rows(load_embeddings(exported).vectors, best.vectors).min() >= 0.999

    # Publish (the LIS callback is off here to keep the test short: the report files are the fixture's).
    (run / "lis_report.json").write_text(json.dumps(REPORT))
    shutil.copyfile(_a_png(tmp_path), run / "lis_curve.png")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    publish(run, "someone/prompted", endpoint=hub.endpoint)
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name, content in hub.files("someone/prompted").items():
        (downloaded / name).write_bytes(content)
    assert read_adapter_info(downloaded).batcher["prompt"] == CUSTOM_PROMPT
    assert f"prompt={CUSTOM_PROMPT!r}" in (downloaded / "README.md").read_text()

    # Reloaded from what the Hub holds: the same prompt, the same embeddings; the default prompt would differ.
    embedder, batcher = load_published(downloaded, base_model=str(base_model))
    assert batcher.prompt == CUSTOM_PROMPT
    from align.collate import items_from_catalogue

    items = items_from_catalogue(load_datadir(data_dir))
    reloaded = export_embeddings(embedder, batcher, items, progress=False)
    assert reloaded.ids == best.ids and cosine_rows(reloaded.vectors, best.vectors).min() >= 0.999
    plain, plain_batcher = load_export_model(base_model, downloaded, batcher_options={"prompt": DEFAULT_PROMPT})
    assert cosine_rows(export_embeddings(plain, plain_batcher, items, progress=False).vectors, best.vectors).min() < 0.99


def cosine_rows(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _a_png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "curve.png"
    Image.new("RGB", (8, 8), (0, 90, 200)).save(path)
    return path


def test_publish_merged_adds_a_verified_merged_model_loadable_without_peft(run_copy, hub, no_token, capsys,
                                                                           monkeypatch):
    import sys

    rc = main(["publish", str(run_copy), "--repo-id", "someone/tiny-items", "--dry-run", "--merged",
               "--endpoint", hub.endpoint])
    out = capsys.readouterr().out
    assert rc == 0 and hub.requests == [] and "merged model in merged/: min cosine" in out
    merged = run_copy / "publish" / "merged"
    assert "merged/config.json" in out and (merged / "projection_head.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()
    assert "## Merged model (no peft)" in (run_copy / "publish" / "README.md").read_text()
    monkeypatch.setitem(sys.modules, "peft", None)  # the merged folder loads with transformers alone
    from align.export import load_export_model

    embedder, batcher = load_export_model(str(merged), str(merged))
    assert not any("lora" in name for name, _ in embedder.named_parameters())
