"""Drawing a detector's boxes and masks on image files (PNG), with the detections as data."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["draw_detections", "detect_files"]

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def draw_detections(image: torch.Tensor, output: dict[str, Any], class_names: Sequence[str], score_threshold: float,
                    display_size: int = 0) -> torch.Tensor:
    """(3, H, W) uint8 image with the detections above ``score_threshold`` drawn on it.

    Images whose shorter side is under ``display_size`` are first upscaled
    by an integer factor (nearest neighbour), so labels stay legible.
    """
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
    colors = [PALETTE[(int(label) - 1) % len(PALETTE)] for label in labels]
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks.reshape(-1, *image.shape[-2:]), alpha=0.45, colors=colors)
    if len(boxes):
        from matplotlib import font_manager  # a TrueType font that scales (PIL's default does not)

        names = [f"{class_names[int(label) - 1]} {float(score):.2f}" for label, score in zip(labels, scores)]
        font = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
        image = draw_bounding_boxes(image, boxes, labels=names, colors=colors, width=2, font=font,
                                    font_size=max(10, min(image.shape[-2:]) // 24))
    return image


def detect_files(
    checkpoint: str | os.PathLike[str],
    paths: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    score_threshold: float = 0.5,
    display_size: int = 384,
    device: str = "auto",
    amp: bool = False,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run a saved detector on image files; write ``OUT/<stem>_det.png`` for each.

    Images are read by :func:`botnet.images.read_image` (the package's one
    reader). Returns one record per image: ``image``, ``png``, ``size``
    [W, H] and ``detections`` (label, score, box_xyxy) above the threshold;
    ``on_image`` is called with each record as it is done.
    """
    from torchvision.transforms.v2 import functional as TF

    from ..runtime.store import atomic_write
    from ..images import read_image
    from ..runtime.device import resolve_device
    from .checkpoint import load_detector

    if not 0 <= score_threshold <= 1:
        raise ValueError(f"score threshold must be in [0, 1], got {score_threshold}")
    target = resolve_device(device)
    model, meta = load_detector(checkpoint, map_location=target)
    class_names = meta["class_names"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in paths:
        image = read_image(path, 3)
        with torch.no_grad(), torch.autocast(target.type, dtype=torch.bfloat16, enabled=amp):
            output = model([TF.to_dtype(image, torch.float32, scale=True).to(target)])[0]
        output = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in output.items()}
        drawn = draw_detections(image, output, class_names, score_threshold, display_size)
        png = out_dir / f"{Path(path).stem}_det.png"
        atomic_write(png, lambda tmp: TF.to_pil_image(drawn).save(tmp, format="PNG"))
        keep = output["scores"] >= score_threshold
        record = {
            "image": str(path), "png": str(png), "size": [int(image.shape[2]), int(image.shape[1])],
            "detections": [
                {"label": class_names[int(label) - 1], "score": round(float(score), 4),
                 "box_xyxy": [round(float(v), 1) for v in box]}
                for box, label, score in zip(output["boxes"][keep], output["labels"][keep], output["scores"][keep])
            ],
        }
        records.append(record)
        if on_image is not None:
            on_image(record)
    return records
