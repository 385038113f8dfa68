"""``botnet detect train|eval|predict|make-synthetic``: Mask R-CNN / Faster R-CNN with BoTNet backbones.

Argument parsing and printing only: training is :func:`botnet.detection.train.train`
(the same engine, shared options and run directory as ``botnet train``),
evaluation :func:`botnet.detection.evaluate.evaluate_checkpoint`, drawing
:func:`botnet.detection.predict.detect_files`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..detection.train import TrainConfig
    from ._options import add_config_options, device_arg, fraction_arg, nonneg_int_arg, positive_int_arg

    parser = subparsers.add_parser(
        "detect",
        help="object detection / instance segmentation (Mask R-CNN) with BoTNet backbones",
        description="Train, evaluate and run Mask R-CNN / Faster R-CNN with BoTNet FPN backbones on "
        "COCO-format data (or generated shapes).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    parser.set_defaults(run=lambda args: parser.print_help() or 2)

    synth = actions.add_parser("make-synthetic", help="write the synthetic shapes dataset (COCO format)")
    synth.add_argument("root", type=Path, help="output folder")
    synth.add_argument("--train", type=nonneg_int_arg, default=200, help="training images (default 200)")
    synth.add_argument("--val", type=nonneg_int_arg, default=50, help="validation images (default 50)")
    synth.add_argument("--min-size", type=positive_int_arg, default=64, help="smallest image side (default 64)")
    synth.add_argument("--max-size", type=positive_int_arg, default=128, help="largest image side (default 128)")
    synth.add_argument("--max-objects", type=positive_int_arg, default=3, help="shapes per image, at most (default 3)")
    synth.add_argument("--seed", type=nonneg_int_arg, default=0)
    synth.set_defaults(run=run_make_synthetic)

    d = TrainConfig()
    train = actions.add_parser(
        "train", help="train a detector (single device or torchrun)",
        description="Train Mask R-CNN / Faster R-CNN with a BoTNet FPN backbone. The shared options and the run "
        "directory (OUT/config.json, metrics.jsonl, {last,best}.pt and .safetensors) are `botnet train`'s. With no "
        f"options: a {d.arch} with a {d.backbone} backbone on generated shapes (OUT/synthetic). Under torchrun "
        "every process takes one GPU; --batch-size is per process.",
    )
    add_config_options(train, TrainConfig)
    train.set_defaults(run=run_train)

    evaluate = actions.add_parser("eval", help="COCO box (and mask) mAP of a trained detector")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help=".pt, .safetensors or run folder")
    evaluate.add_argument("--data", type=Path, required=True, help="COCO-layout root")
    evaluate.add_argument("--split", default="val", help="split name (default val; COCO 2017: val2017)")
    evaluate.add_argument("--max-images", type=positive_int_arg, default=None,
                          help="evaluate on the first N images only")
    evaluate.add_argument("-b", "--batch-size", type=positive_int_arg, default=2)
    evaluate.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    _add_runtime_args(evaluate, device_arg, nonneg_int_arg)
    evaluate.set_defaults(run=run_eval)

    predict = actions.add_parser("predict", help="draw detected boxes and masks on images (PNG)")
    predict.add_argument("images", nargs="+", metavar="INPUT",
                         help="image files, folders (recursive, sorted, hidden entries skipped) or quoted globs")
    predict.add_argument("--checkpoint", type=Path, required=True, help=".pt, .safetensors or run folder")
    predict.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    predict.add_argument("--score-threshold", type=fraction_arg(0, 1, high_open=False), default=0.5,
                         help="draw detections above this score (default 0.5)")
    predict.add_argument("--display-size", type=nonneg_int_arg, default=384,
                         help="upscale smaller images so the shorter side is at least this (default 384)")
    predict.add_argument("--json", type=Path, default=None, help="also write the detections to this JSON file")
    _add_runtime_args(predict, device_arg, nonneg_int_arg)
    predict.set_defaults(run=run_predict)


def _add_runtime_args(parser: argparse.ArgumentParser, device_arg: Any, nonneg_int_arg: Any) -> None:
    parser.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("-j", "--workers", type=nonneg_int_arg, default=0,
                        help="data-loading processes (default 0: in the main process)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")


def _check_out(path: Path, what: str) -> None:
    from ..runtime.checks import check_out_dir

    try:
        check_out_dir(path)
    except ValueError as err:
        raise CommandError(str(err).replace("--out", what, 1)) from None


def _console() -> Any:
    from ..runtime.console import console

    return console()


def _metrics_table(metrics: dict[str, dict[str, float]], title: str) -> Any:
    from rich.table import Table

    from ..detection.metrics import COCO_STAT_NAMES

    table = Table(title=title)
    table.add_column("metric")
    for iou_type in metrics:
        table.add_column({"bbox": "box", "segm": "mask"}[iou_type], justify="right")
    for name in COCO_STAT_NAMES:
        table.add_row(name, *(f"{metrics[t][name]:.3f}" for t in metrics))
    return table


def _require_pycocotools() -> None:
    from ..detection.data import require_pycocotools

    try:
        require_pycocotools()
    except ImportError as err:
        raise CommandError(str(err)) from None


# --- make-synthetic ------------------------------------------------------------------------------

def run_make_synthetic(args: argparse.Namespace) -> int:
    _require_pycocotools()
    from rich.table import Table

    from ..detection.data import make_synthetic_shapes

    _check_out(args.root, "root")
    written = make_synthetic_shapes(
        args.root, {"train": args.train, "val": args.val}, min_size=args.min_size, max_size=args.max_size,
        max_objects=args.max_objects, seed=args.seed,
    )
    table = Table(title=f"synthetic shapes in {args.root}")
    for column in ("split", "images", "instances", "annotation file"):
        table.add_column(column)
    for split, (_, ann_file) in written.items():
        payload = json.loads(ann_file.read_text())
        table.add_row(split, str(len(payload["images"])), str(len(payload["annotations"])), str(ann_file))
    _console().print(table)
    return 0


# --- train ---------------------------------------------------------------------------------------

def run_train(args: argparse.Namespace) -> int:
    _require_pycocotools()
    from ..detection.train import TrainConfig, train
    from ..runtime.distributed import launched_as_main
    from ._options import config_overrides

    summary = train(resume=args.resume, **config_overrides(args, TrainConfig))
    if not launched_as_main():  # under torchrun, rank 0 prints
        return 0
    console = _console()
    final = summary["final"]
    metrics = {t: {k.split("_", 1)[1]: v for k, v in final.items() if k.startswith(f"{t}_")} for t in ("bbox", "segm")}
    metrics = {t: m for t, m in metrics.items() if m}
    if metrics:
        console.print(_metrics_table(metrics, f"COCO metrics after epoch {final['epoch']}"))
    return 0


# --- eval ----------------------------------------------------------------------------------------

def run_eval(args: argparse.Namespace) -> int:
    _require_pycocotools()
    from ..runtime.store import atomic_write
    from ..detection.evaluate import evaluate_checkpoint
    from ..runtime.console import Progress

    with Progress() as progress:
        result = evaluate_checkpoint(
            str(args.checkpoint), str(args.data), args.split, max_images=args.max_images, batch_size=args.batch_size,
            workers=args.workers, device=args.device, amp=args.amp,
            on_start=lambda total: progress.start("evaluating", total), on_step=lambda: progress.update(1),
        )
    console = _console()
    console.print(f"{args.checkpoint} on {args.data} ({args.split}, {result['images']} images)")
    console.print(_metrics_table(result["metrics"], "COCO metrics"))
    if args.json:
        text = json.dumps(result["metrics"], indent=1)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 0


# --- predict -------------------------------------------------------------------------------------

def run_predict(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from ..detection.predict import detect_files
    from ..runtime.console import Progress
    from ..runtime.store import atomic_write
    from ._inputs import exit_status

    _check_out(args.out, "--out")
    table = Table(title=f"detections (score >= {args.score_threshold})")
    for column in ("image", "W x H", "detections", "classes", "PNG"):
        table.add_column(column)

    def add_row(record: dict[str, Any]) -> None:
        if record["error"]:
            table.add_row(escape(Path(record["image"]).name), "-", "-", escape(f"not read: {record['error']}"), "-",
                          style="red")
        else:
            names = [d["label"] for d in record["detections"]]
            table.add_row(escape(Path(record["image"]).name), "x".join(map(str, record["size"])), str(len(names)),
                          ", ".join(f"{n} x{names.count(n)}" for n in dict.fromkeys(names)) or "-", record["png"])
        progress.update(1)

    with Progress() as progress:
        records = detect_files(args.checkpoint, args.images, args.out, score_threshold=args.score_threshold,
                               display_size=args.display_size, device=args.device, amp=args.amp,
                               on_start=lambda total: progress.start("predicting", total), on_image=add_row)
    _console().print(table)
    if args.json:
        text = json.dumps(records, indent=1)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return exit_status("botnet detect", records)
