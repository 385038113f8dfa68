"""``botnet eval``: top-1, top-5, per-class accuracy and a confusion-matrix PNG for a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix PNG",
        description="Evaluate a trained model on a dataset's validation (or training) split. The image size, "
        "normalisation and class names come from the checkpoint; the dataset defaults to the one it was "
        "trained on.",
    )
    parser.add_argument("--checkpoint", required=True, help="a .pt, a .safetensors or a `botnet train` run directory")
    parser.add_argument("--dataset", choices=("digits", "fashion-mnist", "folder"),
                        help="default: the dataset recorded in the checkpoint")
    parser.add_argument("--data-dir", help="Fashion-MNIST IDX directory or ImageFolder root")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("-j", "--workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--confusion", metavar="PNG",
                        help="confusion-matrix image (default: confusion-SPLIT.png beside the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from torch.utils.data import DataLoader

    from ..checkpoint import load_model
    from ..data import build_data
    from ..evaluate import evaluate
    from ..plots import plot_confusion_matrix
    from ..train import resolve_device
    from . import CommandError

    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, map_location=device)
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise CommandError(f"{args.checkpoint!r} does not record its dataset; pass --dataset")
    missing = [k for k in ("img_size", "mean", "std", "class_names") if k not in meta]
    if missing:
        raise CommandError(f"{args.checkpoint!r} lacks {missing} in its description; it was not written by botnet train")
    split = meta.get("split", {}) if dataset == meta.get("dataset") else {}
    data = build_data(
        dataset, args.data_dir, tuple(meta["img_size"]), aug="none", in_chans=model.in_chans,
        norm=(meta["mean"], meta["std"]), seed=split.get("seed", 0), val_fraction=split.get("val_fraction", 0.2),
    )
    if data.class_names != list(meta["class_names"]):
        raise CommandError(
            f"the model was trained on classes {meta['class_names']} but {dataset} has {data.class_names}"
        )
    images = data.val if args.split == "val" else data.train  # aug="none": no augmentation on either
    loader = DataLoader(images, batch_size=args.batch_size, num_workers=args.workers)
    result = evaluate(model, loader, device, data.num_classes, confusion=True)
    per_class = result.per_class_accuracy()

    checkpoint = Path(args.checkpoint)
    png = Path(args.confusion) if args.confusion else (checkpoint if checkpoint.is_dir() else checkpoint.parent) / (
        f"confusion-{args.split}.png"
    )
    plot_confusion_matrix(
        result.confusion, data.class_names, png,
        title=f"{meta['model']} on {dataset} {args.split}: top-1 {100 * result.top1:.2f}%",
    )
    payload = {
        "checkpoint": str(checkpoint), "model": meta["model"], "dataset": dataset, "split": args.split,
        "images": result.count, "loss": result.loss, "top1": result.top1, "top5": result.top5,
        "per_class_accuracy": dict(zip(data.class_names, per_class)),
        "confusion_matrix": result.confusion.tolist(), "confusion_png": str(png),
    }
    if args.json:
        print(json.dumps(payload))
        return 0
    console = Console(highlight=False)
    table = Table(title=f"{meta['model']}, {dataset} {args.split}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("accuracy", justify="right")
    for name, total, acc in zip(data.class_names, result.confusion.sum(dim=1).tolist(), per_class):
        table.add_row(name, str(total), "-" if total == 0 else f"{100 * acc:.2f}%")
    table.add_section()
    table.add_row("top-1", str(result.count), f"{100 * result.top1:.2f}%", style="bold")
    table.add_row("top-5", "", f"{100 * result.top5:.2f}%")
    console.print(table)
    console.print(f"loss {result.loss:.4f}; confusion matrix: {png}")
    return 0
