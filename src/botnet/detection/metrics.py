"""COCO box and mask mAP with pycocotools (the reference implementation)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["COCO_STAT_NAMES", "coco_evaluate", "to_coco_results"]

# The 12 numbers of COCOeval.summarize(), in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(
    output: dict[str, Tensor], image_id: int, category_ids: Sequence[int], mask_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One image's torchvision detections as COCO result dicts.

    Args:
        output: ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,) in
            1..K, and optionally ``masks`` (N, 1, H, W) probabilities.
        category_ids: COCO id of each label (``category_ids[label - 1]``).

    Returns:
        dicts with ``image_id``, ``category_id``, ``score``, ``bbox`` [x, y, w, h]
        and, with masks, ``segmentation`` (RLE with str counts).
    """
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().cpu().float()
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    scores = output["scores"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    rles: list[dict[str, Any]] | None = None
    if "masks" in output:
        binary = (output["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
    results = []
    for i, (score, label) in enumerate(zip(scores, labels)):
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[label - 1]),
            "score": float(score),
            "bbox": [round(float(v), 2) for v in xywh[i]],
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        results.append(result)
    return results


def coco_evaluate(
    coco_gt: Any, results: list[dict[str, Any]], iou_types: Sequence[str], image_ids: Sequence[int] | None = None
) -> dict[str, dict[str, float]]:
    """COCO mAP of ``results`` against a ``pycocotools.coco.COCO`` ground truth.

    Args:
        coco_gt: the ground-truth index (``CocoDetection.coco``).
        results: from :func:`to_coco_results`, all images together.
        iou_types: "bbox" and/or "segm".
        image_ids: evaluate on these images only (default: all of coco_gt).

    Returns:
        {iou_type: {"AP": ..., "AP50": ..., ...}} (the 12 COCO numbers,
        0..1; -1 where COCO has no ground truth of that size). No
        detection at all scores 0.
    """
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(set(image_ids))
    metrics = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        if not results:  # pycocotools cannot load an empty result list
            metrics[iou_type] = dict.fromkeys(COCO_STAT_NAMES, 0.0)
            continue
        # Without the other type's key, loadRes takes each result's area (COCO's small /
        # medium / large split) from its box or its mask; it also adds keys in place.
        other = "segmentation" if iou_type == "bbox" else "bbox"
        if iou_type == "segm" and "segmentation" not in results[0]:
            raise ValueError("segm evaluation needs results with masks (a Mask R-CNN model)")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes([{k: v for k, v in r.items() if k != other} for r in results])
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    return metrics
