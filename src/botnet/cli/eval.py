"""``botnet eval``: top-1, top-5, per-class accuracy and a confusion-matrix PNG for a checkpoint."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..classification.data import DATASETS
    from ._options import device_arg, nonneg_int_arg, positive_int_arg

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix PNG",
        description="Evaluate a trained model on a dataset's validation (or training) split. The image size, "
        "normalisation and class names come from the checkpoint; the dataset defaults to the one it was "
        "trained on.",
    )
    parser.add_argument("--checkpoint", required=True, help="a .pt, a .safetensors or a `botnet train` run directory")
    parser.add_argument("--dataset", choices=DATASETS, help="default: the dataset recorded in the checkpoint")
    parser.add_argument("--data-dir", help="Fashion-MNIST IDX directory or ImageFolder root")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("-b", "--batch-size", type=positive_int_arg, default=256)
    parser.add_argument("-j", "--workers", type=nonneg_int_arg, default=0)
    parser.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--img-size", nargs="+", type=positive_int_arg, metavar="SIZE",
                        help="evaluate at this input size instead of the trained one: one side, or H W")
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average the logits of each image and its mirror (default: as the run validated)")
    parser.add_argument("--confusion", metavar="PNG",
                        help="confusion-matrix image (default: confusion-SPLIT.png beside the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..classification.evaluate import evaluate_checkpoint
    from . import CommandError

    if args.img_size is not None and len(args.img_size) > 2:
        raise CommandError(f"--img-size takes one side or H W, got {len(args.img_size)} numbers")
    size = None if args.img_size is None else (args.img_size * 2)[:2]
    payload = evaluate_checkpoint(
        args.checkpoint, args.dataset, args.data_dir, args.split, args.batch_size, args.workers, args.device,
        args.confusion, img_size=size, tta_flip=args.tta_flip,
    )
    if args.json:
        print(json.dumps(payload))
        return 0
    console = Console(highlight=False)
    size = "x".join(map(str, payload["img_size"]))
    tta = ", flip TTA" if payload["tta_flip"] else ""
    table = Table(title=f"{payload['model']}, {payload['dataset']} {payload['split']} at {size} px{tta}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("accuracy", justify="right")
    for name, total in zip(payload["class_names"], payload["class_counts"]):
        acc = payload["per_class_accuracy"][name]
        table.add_row(name, str(total), "-" if total == 0 else f"{100 * acc:.2f}%")
    table.add_section()
    table.add_row("top-1", str(payload["images"]), f"{100 * payload['top1']:.2f}%", style="bold")
    table.add_row("top-5", "", f"{100 * payload['top5']:.2f}%")
    console.print(table)
    console.print(f"loss {payload['loss']:.4f}; confusion matrix: {payload['confusion_png']}")
    return 0
