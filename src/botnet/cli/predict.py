"""``botnet predict --checkpoint CKPT INPUT...``: top-k labels and probabilities of image files.

Inputs are files, folders and globs (:func:`botnet.image_files.image_inputs`,
shared with ``botnet detect predict``); output is a table, ``--json`` or
``--csv``, one record per file, unreadable files listed with the reason
(exit status: :mod:`botnet.cli._inputs`).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._options import device_arg, positive_int_arg

    parser = subparsers.add_parser(
        "predict",
        help="classify image files with a trained checkpoint: top-k labels and probabilities",
        description="Classify image files with a checkpoint. Inputs are files, folders (every image below them, "
        "in sorted order; hidden entries skipped) and quoted glob patterns such as 'photos/*.jpg', in any mix. "
        "Images are read like training images (any Pillow mode; EXIF orientation; 16-bit scaled; transparency "
        "on white), resized to the checkpoint's img_size, converted to its channel count and normalised with its "
        "mean/std; labels are its class_names. A file that cannot be read is listed with the reason; the exit "
        "status is 0 when at least one image was classified, 2 when none was.",
    )
    parser.add_argument("images", nargs="+", metavar="INPUT",
                        help="image files, folders or quoted globs (PNG, JPEG, ... anything Pillow reads)")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors/.pt checkpoint or a training run directory")
    parser.add_argument("--topk", type=positive_int_arg, default=5, help="labels per image (default 5)")
    parser.add_argument("-b", "--batch-size", type=positive_int_arg, default=32)
    parser.add_argument("--device", type=device_arg, default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table: one record per file")
    output.add_argument("--csv", action="store_true", help="print CSV instead of a table: one row per file "
                        "(image, label_1, probability_1, ..., error)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.progress import track

    from ..classification.predict import classify_files
    from ._inputs import exit_status

    stderr = Console(stderr=True)
    machine = args.json or args.csv

    def progress(starts):
        return starts if len(starts) < 2 else track(starts, description="classifying", console=stderr,
                                                    transient=True)

    payload = classify_files(args.checkpoint, args.images, topk=args.topk, batch_size=args.batch_size,
                             device=args.device, progress=None if machine else progress)
    if args.json:
        print(json.dumps(payload, indent=2))
    elif args.csv:
        _print_csv(payload, min(args.topk, payload["num_classes"]))
    else:
        Console().print(_table(payload, args))
    return exit_status("botnet predict", payload["predictions"])


def _print_csv(payload: dict[str, Any], topk: int) -> None:
    import csv
    import sys

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["image", *[f"{name}_{rank}" for rank in range(1, topk + 1) for name in ("label", "probability")],
                     "error"])
    for record in payload["predictions"]:
        cells = [value for entry in record["top"] for value in (entry["label"], f"{entry['probability']:.6f}")]
        writer.writerow([record["image"], *(cells or [""] * 2 * topk), record["error"] or ""])


def _table(payload: dict[str, Any], args: argparse.Namespace) -> Any:
    """The predictions as a table. Image paths are shown relative to the folder all of them share (named in
    the caption), so a narrow terminal shortens the folder, never the file names."""
    import os

    from rich.markup import escape
    from rich.table import Table

    images = [result["image"] for result in payload["predictions"]]
    base = os.path.commonpath([os.path.dirname(os.path.abspath(image)) for image in images])

    def shown(image: str) -> str:
        return escape(os.path.relpath(os.path.abspath(image), base))

    table = Table(title=f"{payload['model']} ({args.checkpoint}): top-{min(args.topk, payload['num_classes'])}")
    table.add_column("image")
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for result in payload["predictions"]:
        if result["error"]:
            table.add_row(shown(result["image"]), "-", escape(f"not read: {result['error']}"), "-", style="red")
        for entry in result["top"]:
            first = entry["rank"] == 1
            table.add_row(shown(result["image"]) if first else "", str(entry["rank"]), escape(entry["label"]),
                          f"{entry['probability']:.4f}", style=None if first else "dim")
        table.add_section()
    captions = [f"images in {escape(base)}"]
    if payload["defaults_used"]:
        captions.append(f"not in the checkpoint, defaults used: {', '.join(payload['defaults_used'])}")
    table.caption = "; ".join(captions)
    return table
