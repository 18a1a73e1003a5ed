"""Embedding export: batched = per-item, sharding, modes, the file, the CLI, failures that leave no file.

One tiny Qwen2-VL and one "trained" adapter (LoRA B weights and head drawn at random, centring
statistics from a training-mode pass, so each part changes the embeddings) serve every test.
The run folder is laid out like the trainer's: RUN_DIR/run.json and RUN_DIR/best/.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from align.cli import main
from align.collate import ItemBatcher, items_from_catalogue
from align.checkpoint import EMBEDDER_CONFIG, batcher_settings, read_adapter_info, write_embedder_config
from align.export import _shard, export_embeddings, export_manifest, load_export_model, write_embeddings
from lis.embeddings import MANIFEST_KEYS, catalogue_hash, load_embeddings
from lis.errors import DataError

N_ITEMS = 7  # odd: a 2-rank export must pad, and 7 is no multiple of 2 x batch size 2
EVAL_START = 1_700_000_600
WORDS = ["red", "blue", "leather", "cotton", "chair", "mug", "watch", "jacket", "vintage", "steel"]


def cosine_rows(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A valid data dir: N_ITEMS items (the last without an image; one text longer than 8 tokens) and a log."""
    from PIL import Image

    root = tmp_path_factory.mktemp("export_data")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_ITEMS):
        text = " ".join(rng.choice(WORDS, size=4 if i != 2 else 20))
        image = None
        if i < N_ITEMS - 1:
            image = f"images/i{i}.png"
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / image)
        rows.append({"item_id": f"i{i}", "text": text, "image": image})
    pd.DataFrame(rows).to_parquet(root / "catalogue.parquet")
    log = pd.DataFrame({"user_id": ["u0", "u1", "u0", "u1"], "item_id": ["i0", "i1", "i2", "i3"],
                        "timestamp": np.arange(4, dtype=np.int64) + 1_700_000_000, "label": [1, 0, 1, 1]})
    log.to_parquet(root / "log.parquet")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir):
    from align.models.tiny import build_tiny_vlm

    out = tmp_path_factory.mktemp("export_model") / "qwen2_vl"
    build_tiny_vlm("qwen2_vl", out, catalogue=data_dir)
    return out


@pytest.fixture(scope="module")
def items(data_dir):
    from lis.datadir import load_datadir

    return items_from_catalogue(load_datadir(data_dir))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dir, items):
    """(embedder, batcher, RUN_DIR/best) of a random 'trained' adapter saved like the trainer saves it."""
    from align.embedder import ItemEmbedder
    from align.lora import apply_lora
    from align.models.loading import load_vlm

    model, processor, family = load_vlm(str(model_dir))
    model = apply_lora(model, family, r=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: an untouched adapter would change nothing
                param.normal_(0.0, 0.5)
    embedder = ItemEmbedder(model, family, dim=32, pooling="mean")
    batcher = ItemBatcher(processor, family, max_text_tokens=8)  # not the default: must travel in lis_align.json
    embedder.train()
    with torch.no_grad():
        embedder(**batcher(items))  # running statistics of the centring layer move off (0, 1)
    embedder.eval()
    run_dir = tmp_path_factory.mktemp("export_run")
    best = run_dir / "best"
    model.save_pretrained(best)
    embedder.save_head(best)
    processor.save_pretrained(best)
    write_embedder_config(best, batcher_settings(batcher), step=40)
    (run_dir / "run.json").write_text(json.dumps({"base_model": str(model_dir), "best_step": 40,
                                                  "data": {"windows": {"eval_start_unix": EVAL_START}}}))
    return embedder, batcher, best


def naive_loop(embedder, batcher, items) -> np.ndarray:
    """One item at a time, processor per item: the reference the batched export must equal."""
    embedder.eval()
    with torch.no_grad():
        return torch.cat([embedder(**batcher([item])) for item in items]).numpy()


def test_batched_export_equals_per_item_loop_in_the_order_of_items(trained, items):
    embedder, batcher, _ = trained
    shuffled = [items[i] for i in (4, 0, 6, 2, 5, 1, 3)]
    table = export_embeddings(embedder, batcher, shuffled, batch_size=3, progress=False)
    assert table.ids == [item["item_id"] for item in shuffled]
    assert table.vectors.dtype == np.float32 and table.vectors.shape == (N_ITEMS, 32)
    assert cosine_rows(table.vectors, naive_loop(embedder, batcher, shuffled)).min() >= 0.9999
    prefetched = export_embeddings(embedder, batcher, shuffled, batch_size=3, progress=False, prefetch=True)
    np.testing.assert_array_equal(prefetched.vectors, table.vectors)


def test_export_runs_in_eval_mode_and_restores_every_submodule_mode(trained, items):
    embedder, batcher, _ = trained
    embedder.train()
    embedder.head.eval()  # a mixed state must come back as it was, not as one global flag
    before = {name: m.training for name, m in embedder.named_modules()}
    seen = []
    handle = embedder.center.register_forward_hook(lambda module, args, out: seen.append(module.training))
    try:
        export_embeddings(embedder, batcher, items, batch_size=4, progress=False)
    finally:
        handle.remove()
        after = {name: m.training for name, m in embedder.named_modules()}
        embedder.eval()
    assert seen == [False, False]
    assert after == before


def test_export_from_an_item_cache_equals_export_from_the_batcher(trained, items):
    from align.item_cache import ItemCache

    embedder, batcher, _ = trained
    cache = ItemCache(batcher, items, chunk_size=3, progress=False)
    want = export_embeddings(embedder, batcher, items[::-1], batch_size=4, progress=False)
    got = export_embeddings(embedder, cache, items[::-1], batch_size=4, progress=False)
    assert got.ids == want.ids
    assert cosine_rows(got.vectors, want.vectors).min() >= 0.9999
    with pytest.raises(DataError, match="'zz' is not in the item cache"):
        export_embeddings(embedder, cache, [dict(items[0], item_id="zz")], progress=False)


@pytest.mark.parametrize("n", range(1, 10))
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_equal_length_and_concatenate_to_the_items(n, world):
    items = list(range(n))
    shards = [_shard(items, rank, world) for rank in range(world)]
    assert len({len(shard) for shard, _ in shards}) == 1  # every rank runs the same passes
    assert [x for shard, _ in shards for x in shard][:n] == items
    assert all(per == len(shard) for shard, per in shards)


def test_repeated_or_no_items_are_refused(trained, items):
    embedder, batcher, _ = trained
    with pytest.raises(DataError, match="'i1' appears twice"):
        export_embeddings(embedder, batcher, [items[1], items[0], items[1]], progress=False)
    with pytest.raises(DataError, match="no items"):
        export_embeddings(embedder, batcher, [], progress=False)


@pytest.mark.parametrize("prefetch", [False, True])
def test_an_undecodable_image_midway_raises_a_named_error(trained, items, prefetch):
    embedder, batcher, _ = trained
    broken = [dict(item, image=b"not a png") if item["item_id"] == "i4" else item for item in items]
    with pytest.raises(DataError, match="image bytes of item 'i4': cannot decode"):
        export_embeddings(embedder, batcher, broken, batch_size=2, progress=False, prefetch=prefetch)


def test_written_file_loads_with_the_manifest_of_the_data_contract(trained, items, data_dir, model_dir, tmp_path):
    embedder, batcher, best = trained
    catalogue = pd.read_parquet(data_dir / "catalogue.parquet")
    manifest = export_manifest(str(model_dir), adapter_dir=best, step=40, catalogue=catalogue,
                               trained_until=EVAL_START - 1)
    table = export_embeddings(embedder, batcher, items, batch_size=4, manifest=manifest, progress=False)
    assert write_embeddings(tmp_path / "emb.safetensors", table) is True
    loaded = load_embeddings(tmp_path / "emb.safetensors")
    assert loaded.ids == table.ids
    np.testing.assert_array_equal(loaded.vectors, table.vectors)
    assert set(loaded.manifest) == set(MANIFEST_KEYS)
    digest = hashlib.sha256((best / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]
    assert loaded.manifest == {"model": str(model_dir), "adapter_hash": digest, "step": 40, "dim": 32,
                               "catalogue_hash": catalogue_hash(catalogue), "source": "export",
                               "trained_until": EVAL_START - 1, "builder": None, "builder_options": None}
    assert [p.name for p in tmp_path.iterdir()] == ["emb.safetensors"]  # no .tmp left behind


def test_adapter_folder_tells_step_batcher_and_trained_until(trained):
    _, batcher, best = trained
    info = read_adapter_info(best)
    assert info.step == 40
    assert info.trained_until == EVAL_START - 1  # only run.json's windows hold it: lis_align.json has no field
    assert info.batcher["max_text_tokens"] == 8 == batcher.max_text_tokens


def test_cli_round_trip_reproduces_the_in_memory_embeddings(trained, items, data_dir, model_dir, tmp_path, capsys):
    embedder, batcher, best = trained
    want = export_embeddings(embedder, batcher, items, batch_size=4, progress=False)
    out = tmp_path / "cli.safetensors"
    assert main(["export", "--model", str(model_dir), "--adapter", str(best), "--data", str(data_dir),
                 "--out", str(out), "--batch-size", "4", "--no-progress"]) == 0
    got = load_embeddings(out)
    assert got.ids == want.ids
    assert cosine_rows(got.vectors, want.vectors).min() >= 0.9999
    assert got.manifest["step"] == 40 and got.manifest["trained_until"] == EVAL_START - 1
    assert got.manifest["source"] == "export" and got.manifest["adapter_hash"]
    captured = capsys.readouterr()
    assert f"{N_ITEMS} x 32 embeddings" in captured.out
    assert "1 item texts cut to 8 tokens" in captured.out and "warning" not in captured.err
    # The saved adapter reloads with plain PEFT as well (the published contract).
    reloaded, reloaded_batcher = load_export_model(model_dir, best)
    assert cosine_rows(export_embeddings(reloaded, reloaded_batcher, items, progress=False).vectors,
                       want.vectors).min() >= 0.9999


def test_cli_exports_the_ids_file_in_its_order_and_warns_when_training_end_is_unknown(
        trained, data_dir, model_dir, tmp_path, capsys):
    embedder, batcher, best = trained
    lone = tmp_path / "adapter"  # the adapter files without the run folder around them
    shutil.copytree(best, lone)
    (lone / EMBEDDER_CONFIG).unlink()
    (tmp_path / "ids.txt").write_text("# a subset\ni5\n\ni0  # first item\ni3\n")
    out = tmp_path / "subset.safetensors"
    assert main(["export", "--model", str(model_dir), "--adapter", str(lone), "--data", str(data_dir),
                 "--out", str(out), "--ids-file", str(tmp_path / "ids.txt"), "--no-progress"]) == 0
    table = load_embeddings(out)
    assert table.ids == ["i5", "i0", "i3"]
    assert table.manifest["trained_until"] is None and table.manifest["step"] is None
    assert "trained_until' is null" in capsys.readouterr().err
    # No lis_align.json and no run.json: the batcher takes its defaults; none of these texts is
    # longer than 8 tokens, so the vectors still match the trained batcher's.
    reference = export_embeddings(embedder, batcher, items_from_catalogue(
        pd.read_parquet(data_dir / "catalogue.parquet"), ids=["i5", "i0", "i3"], base_dir=data_dir), progress=False)
    assert cosine_rows(table.vectors, reference.vectors).min() >= 0.9999


def test_cli_without_adapter_exports_the_untrained_baseline_with_null_training_end(data_dir, model_dir, tmp_path):
    outs = [tmp_path / f"base{i}.safetensors" for i in range(2)]
    for out in outs:
        assert main(["export", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out),
                     "--no-progress"]) == 0
    first, second = (load_embeddings(out) for out in outs)
    np.testing.assert_array_equal(first.vectors, second.vectors)  # the random head is seeded
    assert first.dim == 128 and first.manifest["adapter_hash"] is None and first.manifest["trained_until"] is None


@pytest.mark.parametrize("case, message", [
    ("model", "model folder not found"),
    ("adapter", "adapter folder not found"),
    ("data", "data directory not found"),
    ("image", "i1.png"),
    ("ids", "'nope', which is not in the catalogue"),
])
def test_cli_bad_input_exits_2_with_a_named_error(case, message, data_dir, model_dir, tmp_path, capsys):
    model, adapter, data = str(model_dir), None, str(data_dir)
    extra = []
    if case == "model":
        model = str(tmp_path / "no_model")
    elif case == "adapter":
        adapter = str(tmp_path / "no_adapter")
    elif case == "data":
        data = str(tmp_path / "no_data")
    elif case == "image":
        shutil.copytree(data_dir, tmp_path / "data")
        (tmp_path / "data" / "images" / "i1.png").unlink()
        data = str(tmp_path / "data")
    elif case == "ids":
        (tmp_path / "ids.txt").write_text("i0\nnope\n")
        extra = ["--ids-file", str(tmp_path / "ids.txt")]
    out = tmp_path / "out.safetensors"
    argv = ["export", "--model", model, "--data", data, "--out", str(out), "--no-progress", *extra]
    assert main(argv + (["--adapter", adapter] if adapter else [])) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not out.exists()


def corrupt_png_pixels(path) -> None:
    """Overwrite the compressed pixels with garbage but keep every chunk CRC valid.

    ``PIL.Image.verify`` (the data-dir check) passes such a file; decoding fails. That is the
    corrupt image found only midway through an export.
    """
    data = bytearray(path.read_bytes())
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            body = bytes(np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8))
            data[pos + 8:pos + 8 + length] = body
            data[pos + 8 + length:pos + 12 + length] = struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + length
    path.write_bytes(bytes(data))


def test_corrupt_image_midway_leaves_no_output_file(data_dir, model_dir, tmp_path, capsys):
    from lis.datadir import load_datadir

    shutil.copytree(data_dir, tmp_path / "data")
    corrupt_png_pixels(tmp_path / "data" / "images" / "i5.png")
    load_datadir(tmp_path / "data")  # the up-front check cannot see it
    out = tmp_path / "out" / "emb.safetensors"
    assert main(["export", "--model", str(model_dir), "--data", str(tmp_path / "data"), "--out", str(out),
                 "--batch-size", "2", "--no-progress"]) == 2
    assert "i5.png: cannot decode the image of item 'i5'" in capsys.readouterr().err
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_export_equals_single_process_runs_equal_passes_and_fails_together(
        trained, items, data_dir, model_dir, tmp_path):
    from tests.helpers_dist import launch_two_procs, parse_results

    embedder, batcher, best = trained
    single = export_embeddings(embedder, batcher, items, batch_size=2, progress=False)
    api, cli = tmp_path / "api.safetensors", tmp_path / "cli.safetensors"
    _, out, _ = launch_two_procs("tests/align/dist_scripts/export_two_procs.py",
                                 [model_dir, best, data_dir, api, cli, 2], timeout=240)
    ranks = parse_results(out)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # 7 items over 2 ranks: 4 each (rank 1 gets one pad), in batches of 2 -> [2, 2] on both ranks.
    assert [r["forward_batches"] for r in ranks] == [[2, 2]] * 2
    assert [r["wrote"] for r in ranks] == [True, False] and [r["cli_rc"] for r in ranks] == [0, 0]
    # A bad image in rank 1's slice stops both ranks (rank 0 is not left waiting in a collective).
    assert ranks[1]["error"].startswith("DataError: image bytes of item 'i5': cannot decode")
    assert ranks[0]["error"].startswith("DataError: export: rank 1 could not prepare a batch: image bytes of item 'i5'")
    for r in ranks:
        assert r["ids"] == single.ids
        assert cosine_rows(r["vectors"], single.vectors).min() >= 0.9999
    for path in (api, cli):
        table = load_embeddings(path)
        assert table.ids == single.ids
        assert cosine_rows(table.vectors, single.vectors).min() >= 0.9999
