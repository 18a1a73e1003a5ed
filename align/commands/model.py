"""``lis-align model tiny``: build a tiny randomly initialised VLM folder for tests and demos."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="model utilities (tiny offline VLMs)")
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION")
    actions.required = True
    tiny = actions.add_parser(
        "tiny", help="build a tiny random VLM of a real architecture, loadable with from_pretrained",
        description="Build a tiny randomly initialised VLM (hidden 64, 2 layers) with a BPE tokenizer trained on "
                    "the catalogue's text; the folder loads like a downloaded checkpoint.",
    )
    tiny.add_argument("--family", required=True, choices=("qwen2_vl", "llava", "idefics3"))
    tiny.add_argument("--out", required=True, help="output folder")
    tiny.add_argument("--catalogue", default=None,
                      help="data dir or catalogue file whose 'text' trains the tokenizer (default: built-in corpus)")
    tiny.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary target (default 1024)")
    tiny.add_argument("--image-size", type=int, default=64, help="image side in pixels, multiple of 16 (default 64)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=run_tiny)


def run_tiny(args) -> int:
    from align.models.tiny import build_tiny_vlm, count_parameters
    from lis.paths import check_output_dir

    check_output_dir(args.out, "--out", [args.catalogue])

    model, _ = build_tiny_vlm(args.family, args.out, catalogue=args.catalogue, vocab_size=args.vocab_size,
                              image_size=args.image_size, seed=args.seed)
    print(f"{args.family}: {count_parameters(model):,} parameters -> {args.out}")
    return 0
