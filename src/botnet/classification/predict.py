"""Classify image files with a saved model: preprocessing from its description, top-k output.

The model description saved with a checkpoint (see :mod:`botnet.checkpoint`)
says how images were fed during training: ``img_size`` [H, W], ``mean``,
``std``, ``class_names``. Each image is read by :func:`botnet.images.read_image`
with the model's ``in_chans`` (the package's one reader: orientation,
16-bit, alpha and every Pillow mode handled the same way as in training),
resized to ``img_size`` (the whole image, aspect ratio not kept, as in
training) and normalised.
Missing entries fall back to the model's reference size, ImageNet's mean/std
(their channel average for 1-channel models) and names ``class_<i>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..images import read_image as read_image_tensor
from ..images import IMAGENET_MEAN, IMAGENET_STD, read_pil
from ..models.network import BoTNet

__all__ = ["Preprocessing", "preprocessing_from_meta", "read_image", "predict_topk", "classify_files"]



@dataclass(frozen=True)
class Preprocessing:
    """How to turn an image file into a model input, and what each output means."""

    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    class_names: tuple[str, ...]
    defaults_used: tuple[str, ...] = ()

    def transform(self) -> Any:
        """A torchvision v2 transform: uint8 (in_chans, H, W) image -> normalised float32 (in_chans, *img_size)."""
        from torchvision.transforms import v2

        return v2.Compose([
            v2.ToImage(),
            v2.Resize(list(self.img_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
        ])


def preprocessing_from_meta(model: BoTNet, meta: dict[str, Any]) -> Preprocessing:
    """The :class:`Preprocessing` a checkpoint's description asks for (defaults noted in ``defaults_used``)."""
    if model.in_chans not in (1, 3):
        raise ValueError(f"predicting from image files needs a 1- or 3-channel model, {model.name} has {model.in_chans}")
    defaults = []
    size = meta.get("img_size")
    if size is None:
        defaults.append("img_size")
        ref = model.spec.ref_img_size
        size = (ref, ref) if isinstance(ref, int) else ref
    elif isinstance(size, int):
        size = (size, size)
    mean, std = meta.get("mean"), meta.get("std")
    if mean is None or std is None:
        defaults.append("mean/std")
        if model.in_chans == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    if len(mean) != model.in_chans or len(std) != model.in_chans:
        raise ValueError(f"checkpoint mean/std have {len(mean)}/{len(std)} values for a {model.in_chans}-channel model")
    names = meta.get("class_names")
    if names is None:
        defaults.append("class_names")
        names = [f"class_{i}" for i in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise ValueError(f"checkpoint has {len(names)} class names for {model.num_classes} outputs")
    return Preprocessing(
        img_size=(int(size[0]), int(size[1])), mean=tuple(map(float, mean)), std=tuple(map(float, std)),
        in_chans=model.in_chans, class_names=tuple(map(str, names)), defaults_used=tuple(defaults),
    )


def read_image(path: str | os.PathLike[str]) -> Any:
    """An image file as an RGB PIL image (:func:`botnet.images.read_pil`); errors name the file."""
    return read_pil(path, 3)


@torch.no_grad()
def predict_topk(
    model: BoTNet,
    prep: Preprocessing,
    paths: Sequence[str],
    topk: int = 5,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> list[dict[str, Any]]:
    """Top-k classes of each image.

    Args:
        progress: optional wrapper over the batch start indices (e.g. a rich ``track``).

    Returns:
        One dict per image, in order: ``image`` (the path) and ``top``, a list
        of ``{"rank", "index", "label", "probability"}`` (softmax over all classes).
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    topk = min(topk, model.num_classes)
    transform = prep.transform()
    model = model.to(device).eval()
    starts = range(0, len(paths), batch_size)
    results = []
    for start in progress(starts) if progress else starts:
        chunk = paths[start : start + batch_size]
        batch = torch.stack([transform(read_image_tensor(path, prep.in_chans)) for path in chunk]).to(device)
        probabilities = model(batch).float().softmax(dim=-1)
        values, indices = probabilities.topk(topk, dim=-1)
        for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            top = [
                {"rank": rank + 1, "index": index, "label": prep.class_names[index], "probability": value}
                for rank, (value, index) in enumerate(zip(row_values, row_indices))
            ]
            results.append({"image": path, "top": top})
    return results


def classify_files(
    checkpoint: str | os.PathLike[str],
    paths: Sequence[str],
    topk: int = 5,
    batch_size: int = 32,
    device: str = "cpu",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Top-k classes of image files with a saved classifier; what ``botnet predict`` prints.

    Returns:
        ``{"checkpoint", "model", "num_classes", "img_size", "defaults_used", "predictions"}``,
        ``predictions`` as :func:`predict_topk` gives them.
    """
    from ..checkpoint import load_model
    from ..training.device import resolve_device

    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"no image file at {', '.join(repr(p) for p in missing)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    target = resolve_device(device)
    model, meta = load_model(checkpoint, map_location=target)
    prep = preprocessing_from_meta(model, meta)
    results = predict_topk(model, prep, list(paths), topk=topk, batch_size=batch_size, device=target,
                           progress=progress)
    return {"checkpoint": os.fspath(checkpoint), "model": model.name, "num_classes": model.num_classes,
            "img_size": list(prep.img_size), "defaults_used": list(prep.defaults_used), "predictions": results}
