"""Training and evaluation loops for torchvision detectors (single process or DDP)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from .metrics import coco_evaluate, to_coco_results

__all__ = ["evaluate", "predict", "train_one_epoch", "warmup_schedule"]

Step = Callable[[], None]


def _to_device(images: list[Tensor], targets: list[dict[str, Any]], device: torch.device) -> tuple[list[Tensor], list[dict[str, Any]]]:
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
    return images, targets


def warmup_schedule(
    total_iters: int, warmup_iters: int, *, kind: str = "cosine", steps: Sequence[int] = (), gamma: float = 0.1,
    warmup_factor: float = 0.001,
) -> Callable[[int], float]:
    """LR multiplier per iteration: linear warmup, then cosine decay or steps.

    Args:
        total_iters: iterations of the whole run.
        warmup_iters: linear ramp from ``warmup_factor`` to 1.
        kind: "cosine" (to 0 at the end), "step" (times ``gamma`` at each
            iteration in ``steps``; Mask R-CNN's 1x/3x schedules) or "constant".
    """
    if kind not in ("cosine", "step", "constant"):
        raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {kind!r}")

    def factor(it: int) -> float:
        ramp = 1.0 if it >= warmup_iters else warmup_factor + (1 - warmup_factor) * it / max(1, warmup_iters)
        if kind == "cosine":
            progress = min(1.0, max(0, it - warmup_iters) / max(1, total_iters - warmup_iters))
            return ramp * 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "step":
            return ramp * gamma ** sum(it >= s for s in steps)
        return ramp

    return factor


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    device: torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    autocast_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every loss term and of their sum ("loss").

    Raises:
        FloatingPointError: when the loss stops being finite (with the terms),
            instead of training on.
    """
    model.train()
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for images, targets in loader:
        images, targets = _to_device(images, targets, device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(loss.detach())
        if not math.isfinite(values["loss"]):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise FloatingPointError(f"loss is not finite ({terms}); lower the learning rate or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for k, v in values.items():
            sums[k] += v
        count += 1
        if on_step is not None:
            on_step(values)
    return {k: v / max(1, count) for k, v in sums.items()}


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    device: torch.device,
    category_ids: Sequence[int],
    *,
    autocast_dtype: torch.dtype | None = None,
    on_step: Step | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """COCO results for every image of ``loader`` (this process's share under DDP) and their ids."""
    model.eval()
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for images, targets in loader:
        images = [img.to(device, non_blocking=True) for img in images]
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            outputs = model(images)
        for output, target in zip(outputs, targets):
            output = {k: v.float() if v.is_floating_point() else v for k, v in output.items()}
            results += to_coco_results(output, target["image_id"], category_ids)
            image_ids.append(int(target["image_id"]))
        if on_step is not None:
            on_step()
    return results, image_ids


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    device: torch.device,
    coco_gt: Any,
    category_ids: Sequence[int],
    iou_types: Sequence[str],
    *,
    autocast_dtype: torch.dtype | None = None,
    on_step: Step | None = None,
) -> dict[str, dict[str, float]] | None:
    """COCO mAP over ``loader``'s images. Under DDP every process predicts its
    share, and process 0 gathers and scores them (others return None)."""
    results, image_ids = predict(model, loader, device, category_ids, autocast_dtype=autocast_dtype, on_step=on_step)
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (results, image_ids))
        if dist.get_rank() != 0:
            return None
        # DistributedSampler repeats images to even out the shares: keep each image once.
        seen: set[int] = set()
        results, image_ids = [], []
        for part_results, part_ids in gathered:
            fresh = set(part_ids) - seen
            results += [r for r in part_results if r["image_id"] in fresh]
            image_ids += sorted(fresh)
            seen |= fresh
    return coco_evaluate(coco_gt, results, iou_types, image_ids)
