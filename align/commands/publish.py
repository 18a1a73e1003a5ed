"""``lis-align publish RUN_DIR --repo-id NAME``: verify the best adapter reloads, then push it to the Hub."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Assemble the best checkpoint of a training run (PEFT adapter, projection head, processor,
lis_report.json, lis_curve.png and a model card whose metadata carries AIS, LIS and eta) into
RUN_DIR/publish, reload it from scratch and check it reproduces the run's best embeddings
(cosine >= 0.999 on probe items), then create the Hub repo and upload the folder.

The token comes from HF_TOKEN or the cached `huggingface-cli login`; it is never printed or
written. Nothing is uploaded when verification fails. --dry-run stops after verification and
lists what would be uploaded."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish", help="verify the best adapter of a run and upload it to the Hugging Face Hub",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (run.json, best/, lis_report.json)")
    parser.add_argument("--repo-id", required=True, help="Hub repo, 'namespace/name' (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--dry-run", action="store_true", help="assemble and verify only; upload nothing, no token needed")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--n-probe", type=int, default=32, help="catalogue items re-embedded to verify (default 32)")
    parser.add_argument("--merged", action="store_true",
                        help="also upload the base model with the adapter merged (plain transformers safetensors, "
                             "loadable without peft) in merged/, verified like the adapter")
    parser.add_argument("--min-cosine", type=float, default=0.999,
                        help="least cosine to the run's embedding each probe item must reach (default 0.999)")
    parser.set_defaults(handler=run_publish)


def run_publish(args) -> int:
    from align.publish import publish

    summary = publish(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                      endpoint=args.endpoint, n_probe=args.n_probe, min_cosine=args.min_cosine,
                      merged=args.merged)
    checked = summary["verify"]
    print(f"verified: {checked['n_probe']} probe items reproduce the run's embeddings "
          f"(min cosine {checked['min_cosine']:.6f})")
    if summary.get("merged"):
        print(f"merged model in merged/: min cosine {summary['merged']['min_cosine']:.6f} to the adapter's embeddings")
    if summary["dry_run"]:
        total = sum(size for _, size in summary["files"])
        print(f"dry run: would upload {len(summary['files'])} files ({_size(total)}) from {summary['folder']} "
              f"to {args.repo_id}{' (private)' if args.private else ''}:")
        for name, size in summary["files"]:
            print(f"  {size:>12,d}  {name}")
        return 0
    print(f"uploaded {len(summary['files'])} files to {args.repo_id}: {summary['url']}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
