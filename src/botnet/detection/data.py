"""COCO-format detection data: a checked dataset and a synthetic shapes generator.

Layout (COCO 2017's, and what :func:`make_synthetic_shapes` writes)::

    ROOT/annotations/instances_{split}.json
    ROOT/{split}/<file_name of each image>

Annotation problems are found when the dataset is opened, not deep inside a
training step. The rules:

* a category id that is not in ``categories``, an image id that is not in
  ``images``, a bbox that is not 4 numbers, an image file that does not
  exist: ``ValueError`` / ``FileNotFoundError`` naming the annotation;
* a box reaching outside its image is clipped to it (counted);
* a box with width or height under 1 px (after clipping) is dropped (counted);
* for Mask R-CNN, an annotation without a usable segmentation, or whose mask
  has no pixel inside the image, is dropped (counted);
* ``iscrowd`` annotations are left out of training targets (COCO evaluation
  reads them from the annotation file as regions to ignore);
* images without annotations are kept as negatives.

The counts are in ``dataset.report`` and summarised in one warning.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..images import read_image
from ..runtime.store import atomic_write

__all__ = [
    "SHAPE_CLASSES",
    "CocoDetection",
    "collate",
    "make_synthetic_shapes",
    "require_pycocotools",
    "split_paths",
]

PathLike = str | os.PathLike[str]

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")


def split_paths(root: PathLike, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of ``split`` under a COCO-layout ``root``."""
    root = Path(root)
    return root / split, root / "annotations" / f"instances_{split}.json"


def require_pycocotools() -> None:
    """Raise an ImportError that says how to install pycocotools, if it is missing."""
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise ImportError(
            "COCO-format data and COCO mAP need pycocotools: pip install 'botnet[detection]' (or pycocotools)"
        ) from None


def _quiet(fn: Any, *args: Any) -> Any:
    # pycocotools prints progress lines on every call.
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _usable_polygons(segmentation: Any) -> Any:
    """The segmentation with polygons under 3 points removed, or None if nothing is left."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        return polygons or None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return segmentation
    return None


class CocoDetection(Dataset):
    """A COCO-format dataset yielding torchvision detection targets.

    Args:
        images: folder holding the images (``file_name`` is relative to it).
        annotations: instances JSON (COCO format).
        train: random horizontal flips (torchvision transforms v2).
        with_masks: decode instance masks (Mask R-CNN); also drops
            annotations without a usable mask (see the module docstring).
        limit: use only the first ``limit`` images (by id); all annotations
            are still checked.

    Items:
        image (3, H, W) float in [0, 1], and a target dict with ``boxes``
        (N, 4) float xyxy in pixels, ``labels`` (N,) int64 in 1..K
        (contiguous; ``category_ids[label - 1]`` is the COCO id),
        ``masks`` (N, H, W) uint8 if ``with_masks``, ``image_id`` (int).

    Attributes:
        coco: the ``pycocotools.coco.COCO`` index (for evaluation).
        class_names, category_ids: K names and COCO ids, in label order.
        report: Counter of what was clipped or dropped, by reason.
    """

    def __init__(self, images: PathLike, annotations: PathLike, *, train: bool = False, with_masks: bool = True,
                 limit: int | None = None) -> None:
        require_pycocotools()
        from pycocotools.coco import COCO

        self.images = Path(images)
        annotations = Path(annotations)
        if not annotations.is_file():
            raise FileNotFoundError(f"no annotation file at {str(annotations)!r}")
        if not self.images.is_dir():
            raise FileNotFoundError(f"no image folder at {str(self.images)!r}")
        try:
            self.coco = _quiet(COCO, str(annotations))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as err:
            raise ValueError(f"{str(annotations)!r} is not a COCO instances file: {type(err).__name__}: {err}") from None
        self.with_masks = with_masks
        self.train = train
        self.source = annotations.name
        cats = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"{str(annotations)!r} defines no categories")
        self.category_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        self._label_of = {cat_id: i + 1 for i, cat_id in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.imgs)
        self.report: Counter[str] = Counter()
        self._targets = self._check_annotations()
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be at least 1 image, got {limit}")
            self.image_ids = self.image_ids[:limit]
        self.flip = v2.RandomHorizontalFlip(0.5) if train else None

    def _check_annotations(self) -> dict[int, list[dict[str, Any]]]:
        unknown_category, unknown_image, bad_bbox = [], [], []
        for ann in self.coco.dataset.get("annotations", []):
            if ann.get("category_id") not in self._label_of:
                unknown_category.append((ann.get("id"), ann.get("category_id")))
            if ann.get("image_id") not in self.coco.imgs:
                unknown_image.append((ann.get("id"), ann.get("image_id")))
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                bad_bbox.append((ann.get("id"), bbox))
        for problems, what, known in (
            (unknown_category, "category_id", f"known category ids: {self.category_ids}"),
            (unknown_image, "image_id", f"{len(self.coco.imgs)} images are listed"),
            (bad_bbox, "bbox", "expected [x, y, width, height]"),
        ):
            if problems:
                shown = ", ".join(f"annotation {a} has {what} {v!r}" for a, v in problems[:5])
                more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
                raise ValueError(f"{self.source}: {len(problems)} annotation(s) with a bad {what}: {shown}{more}; {known}")

        missing = [self.coco.imgs[i]["file_name"] for i in self.image_ids
                   if not (self.images / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {self.source} are not in {str(self.images)!r}, e.g. {missing[:3]}"
            )

        targets: dict[int, list[dict[str, Any]]] = {}
        for image_id in self.image_ids:
            info = self.coco.imgs[image_id]
            width, height = info["width"], info["height"]
            kept = []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0):
                    self.report["crowd annotations left out of training"] += 1
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                box = [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]
                if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                    self.report["degenerate boxes (under 1 px) dropped"] += 1
                    continue
                if box != [x, y, x + w, y + h]:
                    self.report["boxes clipped to the image"] += 1
                segmentation = _usable_polygons(ann.get("segmentation")) if self.with_masks else None
                if self.with_masks and segmentation is None:
                    self.report["annotations without a usable mask dropped"] += 1
                    continue
                kept.append({"box": box, "label": self._label_of[ann["category_id"]], "segmentation": segmentation})
            targets[image_id] = kept
        if self.report:
            summary = "; ".join(f"{n} {reason}" for reason, n in sorted(self.report.items()))
            warnings.warn(f"{self.source}: {summary} (see botnet.detection.data for the rules)", stacklevel=3)
        return targets

    @property
    def num_classes(self) -> int:
        """Classes including the background (what the detector's ``num_classes`` wants)."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.image_ids)

    def _mask(self, segmentation: Any, height: int, width: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.images / info["file_name"]
        pixels = read_image(path, 3)  # the package's one reader: orientation, 16-bit, alpha, modes
        if tuple(pixels.shape[1:]) != (info["height"], info["width"]):
            # Annotations drawn on the stored pixels of an image with an EXIF rotation (as
            # detectron2 does: honour EXIF, unless only the stored frame matches the annotation).
            stored = read_image(path, 3, orient=False)
            if tuple(stored.shape[1:]) == (info["height"], info["width"]):
                pixels = stored
        if tuple(pixels.shape[1:]) != (info["height"], info["width"]):
            raise ValueError(
                f"{path}: image is {pixels.shape[2]}x{pixels.shape[1]} (WxH) but {self.source} says "
                f"{info['width']}x{info['height']}"
            )
        height, width = info["height"], info["width"]
        anns = self._targets[image_id]
        boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a["label"] for a in anns], dtype=torch.int64)
        target: dict[str, Any] = {"image_id": image_id}
        masks = None
        if self.with_masks:
            masks = torch.from_numpy(
                np.stack([self._mask(a["segmentation"], height, width) for a in anns])
                if anns else np.zeros((0, height, width), np.uint8)
            )
            has_pixels = masks.flatten(1).amax(1) > 0
            if not bool(has_pixels.all()):
                warnings.warn(
                    f"{self.source}: image {image_id}: dropped {int((~has_pixels).sum())} annotation(s) whose "
                    "mask has no pixel inside the image", stacklevel=2,
                )
                boxes, labels, masks = boxes[has_pixels], labels[has_pixels], masks[has_pixels]
        image = v2.functional.to_dtype(tv_tensors.Image(pixels), torch.float32, scale=True)
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
        target["labels"] = labels
        if masks is not None:
            target["masks"] = tv_tensors.Mask(masks)
        if self.flip is not None:
            image, target = self.flip(image, target)
        # Plain tensors from here: the detector does its own resizing.
        target["boxes"] = target["boxes"].as_subclass(Tensor)
        if masks is not None:
            target["masks"] = target["masks"].as_subclass(Tensor)
        return image.as_subclass(Tensor), target


def collate(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Detection batches are lists: images differ in size."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _shape_polygon(kind: str, x0: float, y0: float, w: float, h: float, rng: random.Random) -> list[tuple[float, float]]:
    if kind == "rectangle":
        return [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if kind == "ellipse":
        cx, cy = x0 + w / 2, y0 + h / 2
        return [(cx + w / 2 * math.cos(2 * math.pi * i / 32), cy + h / 2 * math.sin(2 * math.pi * i / 32)) for i in range(32)]
    apex = x0 + rng.uniform(0.2, 0.8) * w  # triangle: apex on the top edge, base at the bottom
    return [(apex, y0), (x0 + w, y0 + h), (x0, y0 + h)]


def _draw_image(
    rng: random.Random, height: int, width: int, max_objects: int
) -> tuple[Image.Image, list[tuple[int, np.ndarray]]]:
    background = tuple(rng.randint(0, 90) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float, float]] = []
    objects = []
    for _ in range(rng.randint(1, max_objects)):
        for _attempt in range(20):  # non-overlapping boxes, so every mask is the whole shape
            side = min(height, width)
            w, h = rng.uniform(0.2, 0.5) * side, rng.uniform(0.2, 0.5) * side
            x0, y0 = rng.uniform(1, width - w - 1), rng.uniform(1, height - h - 1)
            box = (x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 2)
            if all(box[2] <= p[0] or p[2] <= box[0] or box[3] <= p[1] or p[3] <= box[1] for p in placed):
                break
        else:
            continue
        placed.append(box)
        category = rng.randrange(len(SHAPE_CLASSES))
        polygon = _shape_polygon(SHAPE_CLASSES[category], x0, y0, w, h, rng)
        colour = tuple(rng.randint(120, 255) for _ in range(3))
        draw.polygon(polygon, fill=colour)
        mask_image = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask_image).polygon(polygon, fill=1)
        objects.append((category + 1, np.array(mask_image, dtype=np.uint8)))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 8, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), objects


def make_synthetic_shapes(
    root: PathLike,
    splits: dict[str, int] | None = None,
    *,
    min_size: int = 64,
    max_size: int = 128,
    max_objects: int = 3,
    seed: int = 0,
) -> dict[str, tuple[Path, Path]]:
    """Write a COCO-format dataset of random shapes (rectangles, ellipses, triangles).

    Each image has its own height and width in [min_size, max_size] (the
    detector must cope with varying sizes), a dark noisy background and 1 to
    ``max_objects`` bright non-overlapping shapes; each shape is one instance
    with its tight box and its mask as a run-length encoding (pycocotools).

    Args:
        root: output folder (COCO layout, see the module docstring).
        splits: images per split, default ``{"train": 200, "val": 50}``.

    Returns:
        {split: (image folder, annotation file)}.
    """
    require_pycocotools()
    from pycocotools import mask as mask_utils

    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    splits = {"train": 200, "val": 50} if splits is None else splits
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    written = {}
    for split_index, (split, count) in enumerate(splits.items()):
        rng = random.Random(seed * 1000 + split_index)
        image_dir, ann_file = split_paths(root, split)
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            height, width = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
            image, objects = _draw_image(rng, height, width, max_objects)
            file_name = f"{image_id:06d}.png"
            atomic_write(image_dir / file_name, lambda tmp, image=image: image.save(tmp, format="PNG"))
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for category_id, mask in objects:
                rle = mask_utils.encode(np.asfortranarray(mask))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                area = float(mask_utils.area(rle))
                rle["counts"] = rle["counts"].decode("ascii")  # JSON-able, as in COCO files
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                    "bbox": [x, y, w, h], "area": area, "iscrowd": 0, "segmentation": rle,
                })
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        payload = {"images": images, "annotations": annotations, "categories": categories,
                   "info": {"description": f"botnet synthetic shapes, seed {seed}"}}
        text = json.dumps(payload)
        atomic_write(ann_file, lambda tmp, text=text: tmp.write_text(text))
        written[split] = (image_dir, ann_file)
    return written
