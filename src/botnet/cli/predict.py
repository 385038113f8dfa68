"""``botnet predict --checkpoint CKPT IMAGE...``: top-k labels and probabilities."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify image files with a trained checkpoint: top-k labels and probabilities",
        description="Classify image files with a checkpoint. Images are resized to the checkpoint's img_size, "
        "converted to its channel count and normalised with its mean/std; labels are its class_names.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ... anything Pillow reads)")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors/.pt checkpoint or a training run directory")
    parser.add_argument("--topk", type=int, default=5, help="labels per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from ..checkpoint import load_model
    from ..predict import predict_topk, preprocessing_from_meta
    from . import CommandError

    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"no image file at {', '.join(repr(p) for p in missing)}")
    if args.topk < 1 or args.batch_size < 1:
        raise CommandError("--topk and --batch-size must be >= 1")
    model, meta = load_model(args.checkpoint)
    prep = preprocessing_from_meta(model, meta)

    stderr = Console(stderr=True)
    show_progress = not args.json and len(args.images) > args.batch_size

    def progress(starts):
        return track(starts, description="classifying", console=stderr, transient=True)

    results = predict_topk(model, prep, args.images, topk=args.topk, batch_size=args.batch_size,
                           device=args.device, progress=progress if show_progress else None)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "model": model.name, "img_size": list(prep.img_size),
                          "defaults_used": list(prep.defaults_used), "predictions": results}, indent=2))
        return 0

    table = Table(title=f"{model.name} ({args.checkpoint}): top-{min(args.topk, model.num_classes)}")
    table.add_column("image")
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for result in results:
        for entry in result["top"]:
            first = entry["rank"] == 1
            table.add_row(result["image"] if first else "", str(entry["rank"]), entry["label"],
                          f"{entry['probability']:.4f}", style=None if first else "dim")
        table.add_section()
    if prep.defaults_used:
        table.caption = f"not in the checkpoint, defaults used: {', '.join(prep.defaults_used)}"
    Console().print(table)
    return 0
