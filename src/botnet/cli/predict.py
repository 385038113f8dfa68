"""``botnet predict --checkpoint CKPT IMAGE...``: top-k labels and probabilities."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._options import device_arg, positive_int_arg

    parser = subparsers.add_parser(
        "predict",
        help="classify image files with a trained checkpoint: top-k labels and probabilities",
        description="Classify image files with a checkpoint. Images are read like training images (any Pillow "
        "mode; EXIF orientation; 16-bit scaled; transparency on white), resized to the checkpoint's img_size, "
        "converted to its channel count and normalised with its mean/std; labels are its class_names.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ... anything Pillow reads)")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors/.pt checkpoint or a training run directory")
    parser.add_argument("--topk", type=positive_int_arg, default=5, help="labels per image (default 5)")
    parser.add_argument("-b", "--batch-size", type=positive_int_arg, default=32)
    parser.add_argument("--device", type=device_arg, default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from ..classification.predict import classify_files

    stderr = Console(stderr=True)
    show_progress = not args.json and len(args.images) > args.batch_size

    def progress(starts):
        return track(starts, description="classifying", console=stderr, transient=True)

    payload = classify_files(args.checkpoint, args.images, topk=args.topk, batch_size=args.batch_size,
                             device=args.device, progress=progress if show_progress else None)
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0

    table = Table(title=f"{payload['model']} ({args.checkpoint}): top-{min(args.topk, payload['num_classes'])}")
    table.add_column("image")
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for result in payload["predictions"]:
        for entry in result["top"]:
            first = entry["rank"] == 1
            table.add_row(result["image"] if first else "", str(entry["rank"]), entry["label"],
                          f"{entry['probability']:.4f}", style=None if first else "dim")
        table.add_section()
    if payload["defaults_used"]:
        table.caption = f"not in the checkpoint, defaults used: {', '.join(payload['defaults_used'])}"
    Console().print(table)
    return 0
