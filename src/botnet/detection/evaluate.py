"""COCO evaluation of torchvision detectors (single process or DDP), and of saved checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from .metrics import coco_evaluate, to_coco_results

__all__ = ["coco_predictions", "evaluate", "evaluate_checkpoint", "predict"]

Step = Callable[[], None]


@torch.no_grad()
def coco_predictions(
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


predict = coco_predictions  # the old name


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
    results, image_ids = coco_predictions(model, loader, device, category_ids, autocast_dtype=autocast_dtype,
                                          on_step=on_step)
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (results, image_ids))
        if dist.get_rank() != 0:
            return None
        # A sampler that pads shares repeats images: keep each image once.
        seen: set[int] = set()
        results, image_ids = [], []
        for part_results, part_ids in gathered:
            fresh = set(part_ids) - seen
            results += [r for r in part_results if r["image_id"] in fresh]
            image_ids += sorted(fresh)
            seen |= fresh
    return coco_evaluate(coco_gt, results, iou_types, image_ids)


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    split: str = "val",
    *,
    max_images: int | None = None,
    batch_size: int = 2,
    workers: int = 0,
    device: str = "auto",
    amp: bool = False,
    on_step: Step | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """COCO box (and mask) mAP of a saved detector on a COCO-layout split; what ``botnet detect eval`` prints.

    Args:
        on_start: called with the number of batches before the first one (for a progress bar).

    Returns:
        ``{"checkpoint", "data", "split", "images", "metrics": {"bbox": {...}, "segm": {...}}}``.
    """
    from torch.utils.data import DataLoader

    from ..runtime.device import resolve_device
    from .checkpoint import load_detector
    from .data import CocoDetection, collate, split_paths

    target = resolve_device(device)
    model, meta = load_detector(checkpoint, map_location=target)
    with_masks = meta["config"]["arch"] == "maskrcnn"
    dataset = CocoDetection(*split_paths(data, split), train=False, with_masks=with_masks, limit=max_images)
    if dataset.category_ids != meta["category_ids"]:
        raise ValueError(
            f"{data} ({split}) has categories {dataset.category_ids}, the model was trained on {meta['category_ids']}"
        )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=target.type == "cuda")
    if on_start is not None:
        on_start(len(loader))
    metrics = evaluate(
        model, loader, target, dataset.coco, dataset.category_ids, ["bbox", "segm"] if with_masks else ["bbox"],
        autocast_dtype=torch.bfloat16 if amp else None, on_step=on_step,
    )
    assert metrics is not None
    return {"checkpoint": str(checkpoint), "data": str(data), "split": split, "images": len(dataset),
            "metrics": metrics}
