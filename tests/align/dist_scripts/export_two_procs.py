"""Export the same catalogue twice on every rank (the API, then the CLI); print RESULT per rank.

Usage (through tests/helpers_dist.launch_two_procs, config cpu_2proc):
    export_two_procs.py MODEL_DIR ADAPTER_DIR DATA_DIR OUT_API OUT_CLI BATCH_SIZE

RESULT: rank, world_size, the number of forward passes this rank ran (a hook on the head),
ids and vectors of the returned table, whether this rank wrote OUT_API, the CLI's exit status,
and the error each rank raised when item 5 (in rank 1's slice only) holds undecodable bytes.
"""
import sys

from accelerate import Accelerator

from tests.helpers_dist import print_result  # the launcher puts the repo root on PYTHONPATH


def main():
    model_dir, adapter_dir, data_dir, out_api, out_cli, batch_size = sys.argv[1:7]
    acc = Accelerator(cpu=True)  # see accelerate_configs/cpu_2proc.yaml

    from align.cli import main as cli
    from align.collate import items_from_catalogue
    from align.export import export_embeddings, load_export_model, write_embeddings
    from lis.datadir import load_datadir

    embedder, batcher = load_export_model(model_dir, adapter_dir)
    calls = []
    embedder.head.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    items = items_from_catalogue(load_datadir(data_dir))
    table = export_embeddings(embedder, batcher, items, batch_size=int(batch_size), progress=False)
    wrote = write_embeddings(out_api, table)
    acc.wait_for_everyone()
    rc = cli(["export", "--model", model_dir, "--adapter", adapter_dir, "--data", data_dir, "--out", out_cli,
              "--batch-size", batch_size, "--no-progress"])
    broken = [dict(item, image=b"not an image") if item["item_id"] == "i5" else item for item in items]
    try:
        export_embeddings(embedder, batcher, broken, batch_size=int(batch_size), progress=False)
        error = None
    except Exception as caught:  # the test checks which type and message each rank got
        error = f"{type(caught).__name__}: {caught}"
    print_result({"rank": acc.process_index, "world_size": acc.num_processes, "forward_batches": calls,
                  "ids": table.ids, "vectors": table.vectors.tolist(), "wrote": wrote, "cli_rc": rc,
                  "error": error})
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
