"""``lis-align export``: embed a catalogue with a base model (and adapter) into a safetensors table.

Runs in one process by default. Under ``accelerate launch`` (or ``torchrun``) the same command
shards the items across the processes, gathers the table and writes it once, from rank 0::

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m align.cli export \\
        --model Qwen/Qwen2-VL-2B-Instruct --adapter runs/train/best --data runs/demo/data --out emb.safetensors

Each process holds a full copy of the model (no ZeRO-3 sharding here: the export runs no
backward pass, so a model that fits one device for inference needs nothing more).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="embed the catalogue with a model (and LoRA adapter) into an embeddings file",
        description="Embed every catalogue item (or those of --ids-file) with the base model and, if given, the "
                    "adapter folder of a training run (adapter, projection head, processor, lis_align.json). "
                    "Writes a safetensors table with ids and manifest, atomically.",
    )
    parser.add_argument("--model", required=True, help="base model folder or Hub id")
    parser.add_argument("--adapter", default=None,
                        help="adapter folder (RUN_DIR/best, a checkpoint, or a published folder); without it the "
                             "base model is exported with a random projection head (seed 0): the untrained baseline")
    parser.add_argument("--data", required=True, help="data dir holding catalogue.parquet and images/")
    parser.add_argument("--out", default=None, help="embeddings file to write (.safetensors); optional with --merged")
    parser.add_argument("--dim", type=int, default=None, metavar="D",
                        help="write the first D coordinates, re-normalised (a Matryoshka prefix, loss.matryoshka_dims)")
    parser.add_argument("--merged", default=None, metavar="OUT_DIR",
                        help="also write the base model with the adapter merged (plain transformers safetensors, "
                             "loadable without peft) plus head and processor to OUT_DIR, after checking it embeds "
                             "32 probe items like the adapter (cosine >= 0.999); needs --adapter")
    parser.add_argument("--batch-size", type=int, default=64, help="items per forward pass and process (default 64)")
    parser.add_argument("--ids-file", default=None,
                        help="text file with one item id per line (blank lines and #-comments ignored); "
                             "default: every catalogue item, in catalogue order")
    parser.add_argument("--dtype", default=None, choices=("auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"),
                        help="auto, bf16, fp16 or fp32 (default: the checkpoint's)")
    parser.add_argument("--trained-until", type=int, default=None,
                        help="manifest 'trained_until' (unix seconds) when the adapter folder does not say it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_export)


def run_export(args) -> int:
    from lis.errors import DataError

    if args.batch_size <= 0:
        raise DataError(f"--batch-size: must be a positive integer; got {args.batch_size}.")
    if args.out is None and args.merged is None:
        raise DataError("--out: required (the embeddings file), unless --merged OUT_DIR is given.")
    if args.merged is not None and args.adapter is None:
        raise DataError("--merged: needs --adapter (the LoRA adapter to merge into --model).")
    if args.dim is not None and args.dim <= 0:
        raise DataError(f"--dim: must be a positive integer; got {args.dim}.")
    check_export_paths(args)
    _init_distributed()
    import torch.distributed as dist

    from align.collate import items_from_catalogue
    from align.distributed import is_distributed, is_main_process
    from align.export import (export_embeddings, export_manifest, load_export_model, read_adapter_info,
                              write_embeddings)
    from lis.datadir import load_datadir

    main = is_main_process()
    datadir = load_datadir(args.data)  # validates the catalogue and that every image opens
    ids = read_ids_file(args.ids_file, datadir.catalogue["item_id"]) if args.ids_file else None
    items = items_from_catalogue(datadir, ids=ids)
    if args.merged is not None:
        _write_merged(args, items)
        if args.out is None:
            return 0
    embedder, batcher = load_export_model(args.model, args.adapter, dtype=args.dtype)
    info = read_adapter_info(args.adapter) if args.adapter else None
    trained_until = args.trained_until
    if trained_until is None and info is not None:
        trained_until = info.trained_until
    if args.adapter and trained_until is None and main:
        print(f"lis-align export: warning: {args.adapter} does not say when its training data ends (no run.json "
              "or lis_align.json with it); manifest 'trained_until' is null. Pass --trained-until so AIS can "
              "refuse a table that saw the evaluation window.", file=sys.stderr)
    manifest = export_manifest(args.model, adapter_dir=args.adapter, step=info.step if info else None,
                               catalogue=datadir.catalogue, trained_until=trained_until)
    start = time.perf_counter()
    table = export_embeddings(embedder, batcher, items, batch_size=args.batch_size, manifest=manifest,
                              progress=not args.no_progress)
    seconds = time.perf_counter() - start
    if args.dim is not None:
        from align.export import truncate_table

        table = truncate_table(table, args.dim)
    write_embeddings(args.out, table)
    if is_distributed():
        dist.barrier()  # the file exists on every rank's return
    if main:
        cut = f"; {batcher.truncated} item texts cut to {batcher.max_text_tokens} tokens" if batcher.truncated else ""
        print(f"{len(table)} x {table.dim} embeddings -> {args.out} ({len(table) / seconds:.1f} items/s{cut})")
    return 0


def check_export_paths(args) -> None:
    """--adapter exists with its head; --out is a file and --merged a folder, neither one of the
    inputs (data tables and images, the model and adapter folders, the ids file) nor holding
    one -- checked where paths resolve, before any model is loaded."""
    from lis.datadir import datadir_inputs
    from lis.errors import DataError
    from lis.paths import check_output_dir, check_output_file

    if args.adapter is not None:  # before the model loads: a typo costs nothing
        adapter = Path(args.adapter)
        if not adapter.is_dir():
            raise DataError(f"{adapter}: adapter folder not found (--adapter).")
        if not (adapter / "projection_head.json").is_file():
            raise DataError(f"projection_head.json: not found in {adapter} (--adapter); give a checkpoint folder "
                            "of a training run (RUN_DIR/best, RUN_DIR/checkpoint-N) or a published folder.")
    folders = [path for path in (args.model, args.adapter) if path is not None and Path(path).is_dir()]
    inputs = [*datadir_inputs(args.data), *folders, args.ids_file]
    check_output_file(args.out, "--out", inputs)
    check_output_dir(getattr(args, "merged", None), "--merged", inputs)  # replacing it must not delete an input


def _write_merged(args, items) -> None:
    """``--merged OUT_DIR``: the adapter merged into the base model, verified on 32 probe items (one process)."""
    from align.distributed import is_distributed
    from align.merge import write_merged
    from lis.errors import DataError

    if is_distributed():
        raise DataError("--merged: runs in one process; launch it without accelerate.")
    step = max(1, len(items) // 32)
    result = write_merged(args.model, args.adapter, args.merged, items[::step][:32], dtype=args.dtype)
    print(f"merged model -> {result['folder']} (verified: {result['n_probe']} probe items, "
          f"min cosine {result['min_cosine']:.6f} to the adapter's embeddings)")


def read_ids_file(path, known=None) -> list[str]:
    """Item ids, one a line; blank lines and ``#`` comments skipped.

    A repeated id, an empty file, or (with ``known``, the catalogue's ids) an id the catalogue
    lacks is a DataError naming the file and the line.
    """
    from lis.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ids file not found.")
    ids, seen = [], {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path.name}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
                        "an ids file holds one item id per line.") from None
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if item in seen:
            raise DataError(f"{path.name}: item id {item!r} appears twice (lines {seen[item]} and {number}).")
        seen[item] = number
        ids.append(item)
    if known is not None:
        catalogue = set(map(str, known))
        for item in ids:
            if item not in catalogue:
                raise DataError(f"{path.name}: line {seen[item]} holds item id {item!r}, "
                                "which is not in the catalogue.")
    if not ids:
        raise DataError(f"{path.name}: no item ids in the file.")
    return ids


def _init_distributed() -> None:
    """Join the process group when a launcher started several processes; nothing when alone.

    ``PartialState(cpu=True)`` on a machine without CUDA: accelerate's CPU multi-process launch
    does not pass "use the CPU" on to its workers (see accelerate_configs/cpu_2proc.yaml).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    from align.launcher import die_with_parent

    die_with_parent()  # a worker never outlives the launcher that started it
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())
