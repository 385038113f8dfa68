"""Classification metrics over a data loader, reduced across ranks."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..runtime.distributed import DistInfo, all_reduce_sum

__all__ = ["EvalResult", "evaluate", "evaluate_checkpoint"]


@dataclass
class EvalResult:
    """Totals over a dataset.

    Attributes:
        loss: mean cross-entropy (no label smoothing).
        top1, top5: accuracies as fractions.
        count: images seen.
        confusion: (num_classes, num_classes) counts, rows = true label,
            columns = prediction (None unless requested).
    """

    loss: float
    top1: float
    top5: float
    count: int
    confusion: Tensor | None = None

    def per_class_accuracy(self) -> list[float]:
        """Recall of each class (NaN for a class with no images)."""
        if self.confusion is None:
            raise ValueError("per-class accuracy needs evaluate(..., confusion=True)")
        totals = self.confusion.sum(dim=1).double()
        return (self.confusion.diagonal().double() / totals).tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    confusion: bool = False,
    dist_info: DistInfo | None = None,
    tta_flip: bool = False,
) -> EvalResult:
    """Run ``model`` in eval mode over ``loader``; each rank passes its own shard.

    Sums (loss, correct, count, confusion) are all-reduced, so every rank gets
    the metrics of the whole dataset. ``tta_flip``: the logits are the mean of
    the image's and its mirror image's (test-time augmentation).
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) if confusion else None
    k = min(5, num_classes)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(images)
            if tta_flip:
                logits = 0.5 * (logits + model(images.flip(-1)))
        logits = logits.float()
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += hits[:, 0].sum()
        totals[2] += hits.any(dim=1).sum()
        totals[3] += labels.numel()
        if matrix is not None:
            matrix += torch.bincount(labels * num_classes + topk[:, 0], minlength=num_classes**2).view_as(matrix)
    info = dist_info or DistInfo()
    all_reduce_sum(totals, info)
    if matrix is not None:
        all_reduce_sum(matrix, info)
    model.train(was_training)
    count = int(totals[3].item())
    if count == 0:
        raise ValueError("evaluation data set is empty")
    return EvalResult(
        loss=float(totals[0] / count),
        top1=float(totals[1] / count),
        top5=float(totals[2] / count),
        count=count,
        confusion=None if matrix is None else matrix.cpu(),
    )


def evaluate_checkpoint(
    checkpoint: str,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "val",
    batch_size: int = 256,
    workers: int = 0,
    device: str = "auto",
    confusion_png: str | None = None,
    img_size: int | tuple[int, int] | None = None,
    tta_flip: bool | None = None,
) -> dict:
    """Evaluate a saved classifier on a dataset split; what ``botnet eval`` prints.

    ``img_size`` evaluates at another input size than the one trained at (the
    images are resized; BoTNet's position tables interpolate). ``tta_flip``
    averages the logits of each image and its mirror image; None: as the run
    validated (recorded in the checkpoint).

    The image size, normalisation and class names come from the checkpoint;
    ``dataset`` defaults to the one it was trained on (image folders are
    split again with the run's seed and fraction, so "val" is the same
    held-out set). Writes a confusion-matrix PNG (default
    ``confusion-SPLIT.png`` beside the checkpoint).

    Returns:
        a JSON-able dict: checkpoint, model, dataset, split, images, loss,
        top1, top5, per_class_accuracy, confusion_matrix, confusion_png,
        class_names.
    """
    from pathlib import Path

    from ..checkpoint import load_model
    from ..visualize.plots import plot_confusion_matrix
    from ..runtime.device import resolve_device
    from .data import build_data

    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    target = resolve_device(device)
    model, meta = load_model(checkpoint, map_location=target)
    dataset = dataset or meta.get("dataset")
    if dataset is None:
        raise ValueError(f"{checkpoint!r} does not record its dataset; pass --dataset")
    missing = [k for k in ("img_size", "mean", "std", "class_names") if k not in meta]
    if missing:
        raise ValueError(f"{checkpoint!r} lacks {missing} in its description; it was not written by botnet train")
    how = meta.get("split", {}) if dataset == meta.get("dataset") else {}
    size = tuple(meta["img_size"]) if img_size is None else img_size
    tta = bool(meta.get("tta_flip", False)) if tta_flip is None else tta_flip
    # Shards given as a pattern (no index.json): that pattern is the split to read, the classes the model's.
    pattern = dataset == "wds" and data_dir is not None and not Path(data_dir).is_dir() \
        and Path(data_dir).name != "index.json"
    shards = {"val_data_dir": data_dir, "num_classes": len(meta["class_names"])} if pattern else {}
    data = build_data(
        dataset, data_dir, size, aug="none", in_chans=model.in_chans,
        norm=(meta["mean"], meta["std"]), seed=how.get("seed", 0), val_fraction=how.get("val_fraction", 0.2),
        workers=workers, evaluation=True, **shards,
    )
    if pattern:
        data.class_names = list(meta["class_names"])
    if data.class_names != list(meta["class_names"]):
        raise ValueError(f"the model was trained on classes {meta['class_names']} but {dataset} has {data.class_names}")
    images = data.val if split == "val" else data.train  # aug="none": no augmentation on either
    loader = DataLoader(images, batch_size=batch_size, num_workers=workers)
    result = evaluate(model, loader, target, data.num_classes, confusion=True, tta_flip=tta)
    source = Path(checkpoint)
    png = Path(confusion_png) if confusion_png else (source if source.is_dir() else source.parent) / f"confusion-{split}.png"
    plot_confusion_matrix(
        result.confusion, data.class_names, png,
        title=f"{meta['model']} on {dataset} {split}: top-1 {100 * result.top1:.2f}%",
    )
    return {
        "checkpoint": str(source), "model": meta["model"], "dataset": dataset, "split": split,
        "img_size": list(data.img_size), "tta_flip": tta,
        "images": result.count, "loss": result.loss, "top1": result.top1, "top5": result.top5,
        "class_names": data.class_names,
        "per_class_accuracy": dict(zip(data.class_names, result.per_class_accuracy())),
        "class_counts": result.confusion.sum(dim=1).tolist(),
        "confusion_matrix": result.confusion.tolist(), "confusion_png": str(png),
    }
