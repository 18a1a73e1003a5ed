"""One contrastive batch, uncached and cached (GradCache), on two ranks; prints RESULT per rank.

Args: DATA_DIR BASE_MODEL OUT_DIR. Launched with cpu_2proc (DDP, float64) or
deepspeed_zero{2,3}_cpu (float32). Each rank takes half of a batch of 8 pairs with impression
hard negatives (gathered across ranks) and Matryoshka dims, computes the DDP/ZeRO-synchronised
gradient of every trainable parameter (gathered in full under ZeRO) once with the whole batch
and once with the cached loss in chunks of 5 items, and prints both. The optimiser is SGD with
lr 0, so the step in between only clears the gradients.
"""
import os
import sys

import torch

from tests.helpers_dist import print_result  # the launcher puts the repo root on PYTHONPATH

PAIRS = ([0, 1, 2, 3, 4, 5, 6, 7], [10, 11, 12, 13, 3, 12, 14, 15],
         [[20, 21, -1], [21, 12, 22], [-1, -1, -1], [3, 23, 24], [25, 20, -1], [26, 27, 28], [29, -1, -1], [30, 31, 7]])


def main():
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from align.alignment_model import build_alignment_model
    from align.cached_loss import cached_forward
    from align.collate import BatcherSource, PairCollator, PairDataset, batcher_for_datadir, items_from_catalogue
    from align.config import load_recipe
    from lis.datadir import load_datadir

    data_dir, base_model, out_dir = sys.argv[1:4]
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [
        f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out_dir}",
        "loss.matryoshka_dims=[128,32]", "loss.hard_negatives=3"])
    model, processor, family = build_alignment_model(recipe, base_model)  # before the Accelerator (ZeRO-3)
    dtype = torch.float32 if deepspeed else torch.float64
    model.to(dtype)
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")]) if deepspeed else Accelerator(cpu=True)
    datadir = load_datadir(data_dir, check_images=False)
    source = BatcherSource(batcher_for_datadir(datadir, processor, family, max_text_tokens=16, image_size=32),
                           items_from_catalogue(datadir))
    anchors, positives, negatives = PAIRS
    rank = acc.process_index
    mine = slice(4 * rank, 4 * rank + 4)
    dataset = PairDataset(anchors[mine], positives[mine], torch.linspace(0.5, 1.5, 8)[mine], negatives[mine])
    features = [dataset[i] for i in range(len(dataset))]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)  # DeepSpeed reads the micro batch size from it
    model, opt, _ = acc.prepare(model, opt, loader)
    inner = acc.unwrap_model(model)
    names = [n for n, p in inner.named_parameters() if p.requires_grad]

    results = {}
    for mode, chunk in (("uncached", 0), ("cached", 5)):
        batch = PairCollator(source, use_weights=True, hard_negatives=True, chunk_size=chunk)(features)
        batch = _cast(batch, dtype)
        out = cached_forward(model, batch) if chunk else model(**batch)
        if deepspeed:
            model.set_gradient_accumulation_boundary(True)
            model.backward(out["loss"])
        else:
            out["loss"].backward()
        results[mode] = {"loss": out["loss"].item(), "grads": _full_grads(inner, names, deepspeed)}
        if deepspeed:
            model.step()
        model.zero_grad()  # what Trainer does after every step (ZeRO keeps small parameters' grads otherwise)
        opt.zero_grad()
    print_result({"rank": rank, "world_size": acc.num_processes, "deepspeed": deepspeed,
                  "n_chunks": len(batch.get("chunks", ())), **results})
    acc.wait_for_everyone()


def _cast(batch, dtype):
    if isinstance(batch, dict):
        return {k: _cast(v, dtype) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_cast(v, dtype) for v in batch]
    return batch.to(dtype) if torch.is_tensor(batch) and batch.is_floating_point() else batch


def _full_grads(inner, names, deepspeed):
    params = dict(inner.named_parameters())
    grads = {}
    for name in names:
        if deepspeed:
            from deepspeed.utils import safe_get_full_grad

            grad = safe_get_full_grad(params[name])  # gathered across ranks under ZeRO-2/3
        else:
            grad = params[name].grad
        grads[name] = None if grad is None else grad.detach().double().flatten().tolist()
    return grads


if __name__ == "__main__":
    main()
