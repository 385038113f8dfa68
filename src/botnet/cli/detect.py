"""``botnet detect train|eval|predict|make-synthetic``: Mask R-CNN / Faster R-CNN with BoTNet backbones.

Data are COCO-format folders (``ROOT/{split}/`` images and
``ROOT/annotations/instances_{split}.json``); ``--data synthetic`` generates
a small shapes dataset, so everything runs without a download. Training runs
on one device or under ``torchrun`` (DistributedDataParallel, one process per
GPU), writes atomic checkpoints every epoch and resumes with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from . import CommandError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Datasets whose images are all this small are not upscaled to torchvision's 800 px by default.
SMALL_IMAGES = 256
# Refuse sizes whose c5 attention logits alone would need more than this per image (fp32).
MAX_ATTENTION_BYTES = 16 * 2**30


def register(subparsers: argparse._SubParsersAction) -> None:
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
    synth.add_argument("--train", type=int, default=200, help="training images (default 200)")
    synth.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    synth.add_argument("--min-size", type=int, default=64, help="smallest image side (default 64)")
    synth.add_argument("--max-size", type=int, default=128, help="largest image side (default 128)")
    synth.add_argument("--max-objects", type=int, default=3, help="shapes per image, at most (default 3)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=run_make_synthetic)

    train = actions.add_parser(
        "train", help="train a detector (single device or torchrun)",
        description="Train Mask R-CNN / Faster R-CNN with a BoTNet FPN backbone. Under torchrun every process "
        "takes one GPU; --batch-size is per process.",
    )
    train.add_argument("--data", default="synthetic",
                       help="COCO-layout root, or 'synthetic' to generate shapes under OUT/synthetic (default)")
    train.add_argument("--train-split", default="train", help="training split name (COCO 2017: train2017)")
    train.add_argument("--val-split", default="val", help="validation split name (COCO 2017: val2017; 'none': skip)")
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics.jsonl)")
    _add_model_args(train)
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--batch-size", type=int, default=2, help="images per process and step (default 2)")
    train.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    train.add_argument("--lr", type=float, default=None,
                       help="peak learning rate (default: sgd 0.02, adamw 1e-4, times total batch / 16)")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--schedule", choices=("step", "cosine", "constant"), default="step")
    train.add_argument("--lr-steps", type=int, nargs="+", default=None,
                       help="epochs where a step schedule divides the LR by 10 (default: 2/3 and 8/9 of the run)")
    train.add_argument("--warmup-iters", type=int, default=1000, help="linear warmup iterations (default 1000)")
    train.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this")
    train.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (default 1)")
    train.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    train.add_argument("--max-val-images", type=int, default=None, help="evaluate on the first N images only")
    train.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                       help="continue from OUT/last.pt (or the given .pt)")
    _add_runtime_args(train)
    train.set_defaults(run=run_train)

    evaluate = actions.add_parser("eval", help="COCO box (and mask) mAP of a trained detector")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help=".pt, .safetensors or run folder")
    evaluate.add_argument("--data", type=Path, required=True, help="COCO-layout root")
    evaluate.add_argument("--split", default="val", help="split name (default val; COCO 2017: val2017)")
    evaluate.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only")
    evaluate.add_argument("--batch-size", type=int, default=2)
    evaluate.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    _add_runtime_args(evaluate)
    evaluate.set_defaults(run=run_eval)

    predict = actions.add_parser("predict", help="draw detected boxes and masks on images (PNG)")
    predict.add_argument("images", nargs="+", type=Path, help="image files or folders")
    predict.add_argument("--checkpoint", type=Path, required=True, help=".pt, .safetensors or run folder")
    predict.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    predict.add_argument("--score-threshold", type=float, default=0.5, help="draw detections above this score")
    predict.add_argument("--display-size", type=int, default=384,
                         help="upscale smaller images so the shorter side is at least this (default 384)")
    predict.add_argument("--json", type=Path, default=None, help="also write the detections to this JSON file")
    _add_runtime_args(predict)
    predict.set_defaults(run=run_predict)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--arch", choices=("maskrcnn", "fasterrcnn"), default="maskrcnn")
    group.add_argument("--backbone", default="botnet50", help="registered model (default botnet50)")
    group.add_argument("--weights-backbone", type=Path, default=None,
                       help="ResNet-50 state dict (.pth/.safetensors) for the conv stages")
    group.add_argument("--trainable-layers", type=int, default=None,
                       help="backbone stages trained, 0-5 (default 3 with --weights-backbone, else 5)")
    group.add_argument("--norm", choices=("frozen", "bn", "syncbn"), default=None,
                       help="backbone BN (default frozen with --weights-backbone, else bn; syncbn for multi-GPU)")
    group.add_argument("--returned-layers", type=int, nargs="+", default=[1, 2, 3, 4],
                       help="stages fed to the FPN (default 1 2 3 4)")
    group.add_argument("--fpn-channels", type=int, default=256)
    group.add_argument("--box-head-size", type=int, default=1024)
    group.add_argument("--mask-head-channels", type=int, default=256)
    group.add_argument("--anchor-scale", type=float, default=8.0, help="anchor size per level = scale x stride")
    group.add_argument("--ref-img-size", type=int, default=None,
                       help="image size the attention position tables are made for (default: the model's)")
    group.add_argument("--min-size", type=int, default=None,
                       help="shorter image side after resizing (default 800, or for data whose images are all "
                       f"at most {SMALL_IMAGES} px, like the synthetic shapes, their longest side)")
    group.add_argument("--max-size", type=int, default=None,
                       help="longer side at most (default 1333, or as --min-size for small images)")
    group.add_argument("--box-batch-size", type=int, default=512, help="RoIs sampled per image for the box head")
    group.add_argument("--rpn-post-nms-train", type=int, default=2000, help="proposals kept per image in training")


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--seed", type=int, default=0)


# --- shared helpers -------------------------------------------------------------------------------

def _require_pycocotools() -> None:
    from ..detection.data import require_pycocotools

    try:
        require_pycocotools()
    except ImportError as err:
        raise CommandError(str(err)) from None


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available on this machine")
    return device


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if Console().is_terminal else 120)


def _progress(console: Any, disable: bool = False) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console,
        disable=disable or not console.is_terminal,
        transient=True,
    )


def _loader(dataset: Any, batch_size: int, workers: int, sampler: Any, device: Any) -> Any:
    from torch.utils.data import DataLoader

    from ..detection.data import collate

    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )


def _dataset(root: Path, split: str, *, train: bool, with_masks: bool, limit: int | None = None) -> Any:
    from ..detection.data import CocoDetection, split_paths

    images, annotations = split_paths(root, split)
    dataset = CocoDetection(images, annotations, train=train, with_masks=with_masks)
    if limit is not None:
        dataset.image_ids = dataset.image_ids[:limit]
    return dataset


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


# --- make-synthetic ------------------------------------------------------------------------------

def run_make_synthetic(args: argparse.Namespace) -> int:
    _require_pycocotools()
    from rich.table import Table

    from ..detection.data import make_synthetic_shapes

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

def _config_from_args(args: argparse.Namespace, num_classes: int, largest_side: int) -> Any:
    from ..detection.checkpoint import DetectorConfig

    pretrained = args.weights_backbone is not None
    backbone_kwargs = {"ref_img_size": args.ref_img_size} if args.ref_img_size else {}
    small = largest_side <= SMALL_IMAGES
    default_min, default_max = (largest_side, largest_side) if small else (800, 1333)
    return DetectorConfig(
        arch=args.arch,
        backbone=args.backbone,
        num_classes=num_classes,
        norm=args.norm or ("frozen" if pretrained else "bn"),
        trainable_layers=args.trainable_layers if args.trainable_layers is not None else (3 if pretrained else 5),
        returned_layers=sorted(args.returned_layers),
        fpn_channels=args.fpn_channels,
        box_head_size=args.box_head_size,
        mask_head_channels=args.mask_head_channels,
        anchor_scale=args.anchor_scale,
        backbone_kwargs=backbone_kwargs,
        detector_kwargs={
            "min_size": args.min_size or default_min,
            "max_size": args.max_size or default_max,
            "box_batch_size_per_image": args.box_batch_size,
            "rpn_post_nms_top_n_train": args.rpn_post_nms_train,
        },
    )


def _check_attention_size(spec: dict[str, Any], min_size: int, max_size: int) -> None:
    """Refuse image sizes whose attention logits would not fit in memory, before the first step."""
    stride = 4 if spec["stem"] == "imagenet" else 1
    for stage in spec["stages"]:
        # A stage whose first block attends does so before its stride (the pool comes after attention).
        attends_at = stride if stage["attention"] >= stage["depth"] else stride * stage["stride"]
        stride *= stage["stride"]
        if not stage["attention"]:
            continue
        positions = -(-min_size // attends_at) * -(-max_size // attends_at)
        logits_bytes = positions**2 * spec["heads"] * 4
        if logits_bytes > MAX_ATTENTION_BYTES:
            raise CommandError(
                f"images of {min_size}x{max_size} px give {positions} attention positions at stride {attends_at}: "
                f"{logits_bytes / 2**30:.0f} GiB of attention logits per image. Use smaller --min-size / --max-size "
                "(small-stem models such as botnet_tiny are made for images of 32-256 px)"
            )


def _init_distributed(device_arg: str) -> tuple[Any, int, int]:
    """(device, rank, world size); sets up the process group under torchrun."""
    import torch
    from torch import distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _device(device_arg), 0, 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_arg in ("auto", "cuda"):
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = _device("cpu" if device_arg == "auto" else device_arg), "gloo"
    dist.init_process_group(backend)
    return device, dist.get_rank(), world


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def run_train(args: argparse.Namespace) -> int:
    _require_pycocotools()
    import random

    import torch
    from torch import distributed as dist
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

    from ..checkpoint import atomic_write, load_checkpoint, save_checkpoint
    from ..detection.checkpoint import build_from_config, detector_meta, save_detector
    from ..detection.data import make_synthetic_shapes, split_paths
    from ..detection.engine import evaluate, train_one_epoch, warmup_schedule

    for name in ("epochs", "batch_size", "eval_every"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    device, rank, world = _init_distributed(args.device)
    is_main = rank == 0
    console = _console()
    out: Path = args.out
    synthetic = args.data == "synthetic"
    data_root = out / "synthetic" if synthetic else Path(args.data)
    if synthetic and is_main and not split_paths(data_root, "val")[1].is_file():
        console.print(f"generating the synthetic shapes dataset in {data_root}")
        make_synthetic_shapes(data_root, {"train": 200, "val": 50}, seed=args.seed)
    if world > 1:
        dist.barrier()
    with_masks = args.arch == "maskrcnn"
    train_set = _dataset(data_root, args.train_split, train=True, with_masks=with_masks, limit=args.max_train_images)
    val_set = None
    if args.val_split != "none":
        val_set = _dataset(data_root, args.val_split, train=False, with_masks=with_masks, limit=args.max_val_images)
        if val_set.category_ids != train_set.category_ids:
            raise CommandError(
                f"the {args.val_split} split's categories {val_set.category_ids} differ from the "
                f"{args.train_split} split's {train_set.category_ids}"
            )

    torch.manual_seed(args.seed + rank)
    random.seed(args.seed + rank)
    largest_side = max(max(info["width"], info["height"]) for info in train_set.coco.imgs.values())
    config = _config_from_args(args, train_set.num_classes, largest_side)
    model = build_from_config(config, weights_backbone=args.weights_backbone).to(device)
    sizes = config.detector_kwargs
    _check_attention_size(model.backbone.body_meta["spec"], sizes["min_size"], sizes["max_size"])
    report = model.backbone.load_report
    if report is not None and is_main:
        console.print(f"backbone weights from {args.weights_backbone}: {report.summary()}")
    meta = detector_meta(model, config, class_names=train_set.class_names, category_ids=train_set.category_ids)

    params = [p for p in model.parameters() if p.requires_grad]
    total_batch = args.batch_size * world
    if args.optimizer == "sgd":
        lr = args.lr if args.lr is not None else 0.02 * total_batch / 16
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    else:
        lr = args.lr if args.lr is not None else 1e-4 * total_batch / 16
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)

    train_sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed) if world > 1 else None
    train_loader_len = -(-len(train_sampler if train_sampler else train_set) // args.batch_size)
    total_iters = args.epochs * train_loader_len
    steps = args.lr_steps if args.lr_steps is not None else [round(args.epochs * 2 / 3), round(args.epochs * 8 / 9)]
    schedule = warmup_schedule(
        total_iters, min(args.warmup_iters, total_iters // 2), kind=args.schedule,
        steps=[s * train_loader_len for s in steps],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    start_epoch, best, history = 0, -1.0, []
    resume_path = out / "last.pt" if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if resume_path is not None:
        if not resume_path.is_file():
            raise CommandError(f"--resume: no checkpoint at {resume_path} (nothing to resume)")
        state = load_checkpoint(resume_path)
        differences = _config_differences(state["meta"]["config"], meta["config"])
        if differences:
            raise CommandError(
                f"--resume: {resume_path} was trained with other model options ({'; '.join(differences)}); "
                "give the same options"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"], state["best"], json.loads(state["history"])
        if start_epoch >= args.epochs:
            raise CommandError(f"--resume: {resume_path} already finished {start_epoch} epochs (--epochs {args.epochs})")
        if is_main:
            console.print(f"resuming from {resume_path} after epoch {start_epoch}")

    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp_dtype = torch.bfloat16 if args.amp else None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        n_params = sum(p.numel() for p in model.parameters())
        console.print(
            f"{config.arch} + {config.backbone} FPN: {n_params / 1e6:.2f}M parameters; {len(train_set)} training "
            f"images, {len(val_set) if val_set else 0} validation; {world} process(es) on {device}, "
            f"{total_batch} images per step, {train_loader_len} steps per epoch"
        )

    def save(name: str, epoch: int) -> None:
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "best": best, "history": json.dumps(history), "meta": meta,
        }
        save_checkpoint(out / f"{name}.pt", state)
        save_detector(out / f"{name}.safetensors", model, meta)

    iou_types = ["bbox", "segm"] if with_masks else ["bbox"]
    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
            sampler: Any = train_sampler
        else:  # reproducible order per epoch, also after a resume
            sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        loader = _loader(train_set, args.batch_size, args.workers, sampler, device)
        with _progress(console, disable=not is_main) as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{args.epochs}", total=len(loader), status="")

            def on_step(values: dict[str, float]) -> None:
                progress.update(task, advance=1, status=f"loss {values['loss']:.3f} lr {scheduler.get_last_lr()[0]:.2e}")

            losses = train_one_epoch(
                train_model, optimizer, loader, device, scheduler=scheduler, autocast_dtype=amp_dtype,
                grad_clip=args.grad_clip, on_step=on_step,
            )
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **losses}
        if val_set is not None and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            val_sampler = DistributedSampler(val_set, shuffle=False) if world > 1 else SequentialSampler(val_set)
            val_loader = _loader(val_set, args.batch_size, args.workers, val_sampler, device)
            with _progress(console, disable=not is_main) as progress:
                task = progress.add_task("  evaluating", total=len(val_loader), status="")
                metrics = evaluate(
                    model, val_loader, device, val_set.coco, val_set.category_ids, iou_types,
                    autocast_dtype=amp_dtype, on_step=lambda: progress.update(task, advance=1),
                )
            if metrics is not None:
                record.update({f"{t}_{k}": v for t, m in metrics.items() for k, v in m.items()})
        record["seconds"] = round(time.time() - started, 1)
        if is_main:
            history.append(record)
            score = record.get("bbox_AP")
            if score is not None and score > best:
                best = score
            if (score is not None and score == best) or val_set is None:  # without validation: the latest
                save("best", epoch + 1)
            save("last", epoch + 1)
            atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(history, indent=1)))
            parts = [f"epoch {epoch + 1}/{args.epochs}", f"loss {losses['loss']:.3f}"]
            parts += [f"{name} AP {record[key]:.3f}" for key, name in (("bbox_AP", "box"), ("segm_AP", "mask")) if key in record]
            parts.append(f"{record['seconds']:.0f} s")
            console.print("  ".join(parts))
        if world > 1:
            dist.barrier()

    if is_main:
        final = {t: {k.split("_", 1)[1]: v for k, v in history[-1].items() if k.startswith(f"{t}_")} for t in iou_types}
        if all(final.values()):
            console.print(_metrics_table(final, f"COCO metrics after epoch {history[-1]['epoch']} ({args.val_split})"))
        console.print(f"checkpoints in {out} (best box AP {max(best, 0):.3f})")
    if world > 1:
        dist.destroy_process_group()
    return 0


# --- eval ----------------------------------------------------------------------------------------

def run_eval(args: argparse.Namespace) -> int:
    _require_pycocotools()
    import torch
    from torch.utils.data import SequentialSampler

    from ..checkpoint import atomic_write
    from ..detection.checkpoint import load_detector
    from ..detection.engine import evaluate

    device = _device(args.device)
    model, meta = load_detector(args.checkpoint, map_location=device)
    with_masks = meta["config"]["arch"] == "maskrcnn"
    dataset = _dataset(args.data, args.split, train=False, with_masks=with_masks, limit=args.max_images)
    if dataset.category_ids != meta["category_ids"]:
        raise CommandError(
            f"{args.data} ({args.split}) has categories {dataset.category_ids}, the model was trained on "
            f"{meta['category_ids']}"
        )
    loader = _loader(dataset, args.batch_size, args.workers, SequentialSampler(dataset), device)
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("evaluating", total=len(loader), status="")
        metrics = evaluate(
            model, loader, device, dataset.coco, dataset.category_ids, ["bbox", "segm"] if with_masks else ["bbox"],
            autocast_dtype=torch.bfloat16 if args.amp else None, on_step=lambda: progress.update(task, advance=1),
        )
    assert metrics is not None
    console.print(f"{args.checkpoint} on {args.data} ({args.split}, {len(dataset)} images)")
    console.print(_metrics_table(metrics, "COCO metrics"))
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(metrics, indent=1)))
    return 0


# --- predict -------------------------------------------------------------------------------------

def _image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no image or folder at {str(path)!r}")
    if not files:
        raise CommandError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


def draw_detections(image: Any, output: dict[str, Any], class_names: list[str], score_threshold: float,
                    display_size: int = 0) -> Any:
    """(3, H, W) uint8 image with the detections above ``score_threshold`` drawn on it.

    Images whose shorter side is under ``display_size`` are first upscaled
    by an integer factor (nearest neighbour), so labels stay legible.
    """
    import torch
    from torch.nn import functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output["scores"] >= score_threshold
    boxes, labels, scores = output["boxes"][keep], output["labels"][keep], output["scores"][keep]
    masks = output["masks"][keep, 0] > 0.5 if "masks" in output else None
    factor = max(1, -(-display_size // min(image.shape[-2:]))) if display_size else 1
    if factor > 1:
        image = F.interpolate(image[None].float(), scale_factor=factor, mode="nearest")[0].to(torch.uint8)
        boxes = boxes * factor
        if masks is not None and len(masks):
            masks = F.interpolate(masks[None].float(), scale_factor=factor, mode="nearest")[0] > 0.5
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
    colors = [palette[(int(label) - 1) % len(palette)] for label in labels]
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks.reshape(-1, *image.shape[-2:]), alpha=0.45, colors=colors)
    if len(boxes):
        from matplotlib import font_manager  # a TrueType font that scales (PIL's default does not)

        names = [f"{class_names[int(label) - 1]} {float(score):.2f}" for label, score in zip(labels, scores)]
        font = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
        image = draw_bounding_boxes(image, boxes, labels=names, colors=colors, width=2, font=font,
                                    font_size=max(10, min(image.shape[-2:]) // 24))
    return image


def run_predict(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from rich.table import Table
    from torchvision.transforms.v2 import functional as TF

    from ..checkpoint import atomic_write
    from ..detection.checkpoint import load_detector

    if not 0 <= args.score_threshold <= 1:
        raise CommandError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    files = _image_files(args.images)
    device = _device(args.device)
    model, meta = load_detector(args.checkpoint, map_location=device)
    class_names = meta["class_names"]
    console = _console()
    table = Table(title=f"detections (score >= {args.score_threshold})")
    for column in ("image", "W x H", "detections", "classes", "PNG"):
        table.add_column(column)
    records = []
    args.out.mkdir(parents=True, exist_ok=True)
    with _progress(console) as progress:
        task = progress.add_task("predicting", total=len(files), status="")
        for path in files:
            try:
                with Image.open(path) as pil:
                    image = TF.to_image(pil.convert("RGB"))
            except OSError as err:
                raise CommandError(f"cannot read image {path}: {err}") from None
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                output = model([TF.to_dtype(image, torch.float32, scale=True).to(device)])[0]
            output = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in output.items()}
            drawn = draw_detections(image, output, class_names, args.score_threshold, args.display_size)
            target = args.out / f"{path.stem}_det.png"
            atomic_write(target, lambda tmp: TF.to_pil_image(drawn).save(tmp, format="PNG"))
            keep = output["scores"] >= args.score_threshold
            names = [class_names[int(label) - 1] for label in output["labels"][keep]]
            table.add_row(path.name, f"{image.shape[2]}x{image.shape[1]}", str(len(names)),
                          ", ".join(f"{n} x{names.count(n)}" for n in dict.fromkeys(names)) or "-", str(target))
            records.append({
                "image": str(path), "png": str(target),
                "detections": [
                    {"label": class_names[int(label) - 1], "score": round(float(score), 4),
                     "box_xyxy": [round(float(v), 1) for v in box]}
                    for box, label, score in zip(output["boxes"][keep], output["labels"][keep], output["scores"][keep])
                ],
            })
            progress.update(task, advance=1)
    console.print(table)
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(records, indent=1)))
    return 0
