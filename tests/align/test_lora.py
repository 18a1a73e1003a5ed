"""LoRA: what trains, what stays frozen, and the adapter reloading through plain PEFT."""
from __future__ import annotations

import pytest
import torch

from align.collate import ItemBatcher
from align.embedder import ItemEmbedder
from align.lora import apply_lora, trainable_report


def _grads_after_one_backward(embedder, batch):
    embedder.train()
    embedder(**batch).pow(3).sum().backward()
    return {name for name, p in embedder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_gradients_reach_only_lora_head_and_requested_embeddings(loaded, items, train_embeddings):
    model, processor, family = loaded
    peft_model = apply_lora(model, family, r=4, alpha=8, train_token_embeddings=train_embeddings)
    embedder = ItemEmbedder(peft_model, family)
    with_grad = _grads_after_one_backward(embedder, ItemBatcher(processor, family)(items))
    trainable = {name for name, p in embedder.named_parameters() if p.requires_grad}
    lora = {name for name in trainable if "lora_" in name}
    embeddings = {name for name in trainable if "modules_to_save" in name}
    assert lora and all(("language_model" in n or "text_model" in n) for n in lora)  # vision tower untouched
    assert trainable == lora | embeddings | {"head.weight", "head.bias"}
    assert bool(embeddings) is train_embeddings
    # lora_A gets no gradient at step 0 (lora_B starts at zero), lora_B does; head always.
    assert {"head.weight", "head.bias"} <= with_grad
    assert any("lora_B" in n for n in with_grad)
    assert any("modules_to_save" in n for n in with_grad) is train_embeddings
    assert with_grad <= trainable
    report = trainable_report(peft_model)
    assert report["trainable"] == report["lora"] + report["embeddings"] and report["other"] == 0


@pytest.mark.parametrize("family", ["llava"])
def test_vision_flag_adds_lora_to_the_vision_tower(loaded):
    model, _, family = loaded
    names = [n for n, p in apply_lora(model, family, vision=True).named_parameters() if p.requires_grad]
    assert any("vision_tower" in n for n in names) and any("language_model" in n for n in names)


def test_saved_adapter_reloads_with_plain_peft(tiny_dirs, loaded, items, tmp_path):
    from peft import PeftModel

    from align.models.loading import load_vlm

    model, processor, family = loaded
    batcher = ItemBatcher(processor, family)
    batch = batcher(items)
    torch.manual_seed(0)
    embedder = ItemEmbedder(apply_lora(model, family, r=4, train_token_embeddings=True), family, pooling="mean")
    optimizer = torch.optim.Adam([p for p in embedder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # move LoRA and embeddings away from their (identity) start
        optimizer.zero_grad()
        out = embedder(**batch)
        (out @ out.T).sum().backward()
        optimizer.step()
    embedder.eval()
    embedder.model.save_pretrained(tmp_path / "adapter")
    embedder.save_head(tmp_path / "adapter")
    with torch.no_grad():
        trained = embedder(**batch)

    base, _, _ = load_vlm(str(tiny_dirs[family.name]))
    reloaded = ItemEmbedder(PeftModel.from_pretrained(base, tmp_path / "adapter"), family, pooling="mean").eval()
    reloaded.load_head(tmp_path / "adapter")
    with torch.no_grad():
        again = reloaded(**batch)
        with reloaded.model.disable_adapter():
            untrained = reloaded(**batch)
    assert torch.nn.functional.cosine_similarity(trained, again).min() >= 0.999
    assert torch.nn.functional.cosine_similarity(trained, untrained).min() < 0.999  # the adapter matters
