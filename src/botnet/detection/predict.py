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
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    score_threshold: float = 0.5,
    display_size: int = 384,
    device: str = "auto",
    amp: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run a saved detector on image files; write ``OUT/<stem>_det.png`` for each.

    ``inputs`` are files, folders (recursive, images only, sorted) and glob
    patterns, expanded by :func:`botnet.image_files.image_inputs` (the
    expansion ``botnet predict`` uses too). Images are read by
    :func:`botnet.images.read_image` (the package's one reader). Returns one
    record per file: ``image``, ``png``, ``size`` [W, H], ``detections``
    (label, score, box_xyxy) above the threshold and ``error`` (None); a file
    that cannot be read, and an input that names no file, is a record with
    the reason in ``error`` (``png`` and ``size`` None, no detections), so one
    bad file does not cost the others their results. ``on_start`` is called
    with the number of records, ``on_image`` with each record as it is done.
    Two inputs with one stem (``a.png``, ``sub/a.png``) draw to ``a_det.png``
    and ``a_det-2.png``: no PNG of this call overwrites another.

    Raises:
        botnet.image_files.NothingToRead: no input names any file (before the checkpoint is loaded).
    """
    from torchvision.transforms.v2 import functional as TF

    from ..image_files import image_inputs
    from ..images import read_image
    from ..runtime.device import resolve_device
    from ..runtime.store import atomic_write
    from .checkpoint import load_detector

    if not 0 <= score_threshold <= 1:
        raise ValueError(f"score threshold must be in [0, 1], got {score_threshold}")
    entries = image_inputs(inputs)
    target = resolve_device(device)
    model, meta = load_detector(checkpoint, map_location=target)
    class_names = meta["class_names"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if on_start is not None:
        on_start(len(entries))
    records = []
    written: set[Path] = set()  # a folder's a.png and sub/a.png both draw to a_det.png: the second is a_det-2.png
    for path, problem in entries:
        record: dict[str, Any] = {"image": str(path), "png": None, "size": None, "detections": [], "error": problem}
        try:
            image = read_image(path, 3) if problem is None else None
        except (ValueError, FileNotFoundError) as err:
            record["error"], image = str(err), None
        if image is not None:
            with torch.no_grad(), torch.autocast(target.type, dtype=torch.bfloat16, enabled=amp):
                output = model([TF.to_dtype(image, torch.float32, scale=True).to(target)])[0]
            output = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in output.items()}
            drawn = draw_detections(image, output, class_names, score_threshold, display_size)
            png = _unique(out_dir / f"{Path(path).stem}_det.png", written)
            atomic_write(png, lambda tmp, drawn=drawn: TF.to_pil_image(drawn).save(tmp, format="PNG"))
            keep = output["scores"] >= score_threshold
            record.update(png=str(png), size=[int(image.shape[2]), int(image.shape[1])], detections=[
                {"label": class_names[int(label) - 1], "score": round(float(score), 4),
                 "box_xyxy": [round(float(v), 1) for v in box]}
                for box, label, score in zip(output["boxes"][keep], output["labels"][keep], output["scores"][keep])
            ])
        records.append(record)
        if on_image is not None:
            on_image(record)
    return records


def _unique(png: Path, written: set[Path]) -> Path:
    """``png``, or ``stem-2.png``, ``stem-3.png``, ... if this call already wrote that name."""
    candidate, number = png, 1
    while candidate in written:
        number += 1
        candidate = png.with_name(f"{png.stem}-{number}{png.suffix}")
    written.add(candidate)
    return candidate
