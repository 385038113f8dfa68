"""Classification metrics over a data loader, reduced across ranks."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_reduce_sum

__all__ = ["EvalResult", "evaluate"]


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
) -> EvalResult:
    """Run ``model`` in eval mode over ``loader``; each rank passes its own shard.

    Sums (loss, correct, count, confusion) are all-reduced, so every rank gets
    the metrics of the whole dataset.
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
