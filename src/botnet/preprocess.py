"""From an image file to a model input: the one preprocessing of ``predict`` and ``attention``.

The description saved with a classifier (:mod:`botnet.checkpoint`) says how
images were fed in training: ``img_size`` [H, W], ``mean``, ``std``,
``class_names``. :func:`preprocessing_from_meta` turns it into a
:class:`Preprocessing`; its transform takes what the package's one reader
(:func:`botnet.images.read_image`) gives, a uint8 (C, H, W) image, resizes
it whole to ``img_size`` (antialiased bilinear on the uint8 image, aspect
ratio not kept, as in training) and normalises it. ``botnet predict`` and
``botnet attention`` both call it, so one file gives one model input.

Missing entries fall back to the model's reference size, ImageNet's
mean/std (their channel average for 1-channel models) and names
``class_<i>``; ``defaults_used`` says which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .images import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Preprocessing", "preprocessing_from_meta", "resized_size"]


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an image into a model input, and what each output means.

    Attributes:
        img_size: (H, W) of the model input.
        mean, std: per-channel normalisation (``in_chans`` values each).
        in_chans: channels the image is read with (1 or 3).
        class_names: one per model output.
        defaults_used: description entries that were missing and defaulted.
    """

    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    class_names: tuple[str, ...]
    defaults_used: tuple[str, ...] = ()

    def resize(self, image: Tensor) -> Tensor:
        """uint8 (C, H, W) -> uint8 (C, *img_size), antialiased bilinear (what the model sees, before normalising)."""
        from torchvision.transforms.v2 import functional as TF

        return TF.resize(image, list(self.img_size), antialias=True)

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 (C, H, W) -> float32 (C, H, W), scaled to [0, 1] and normalised with ``mean`` / ``std``."""
        from torchvision.transforms.v2 import functional as TF

        return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), list(self.mean), list(self.std))

    def transform(self) -> Callable[[Tensor], Tensor]:
        """uint8 (in_chans, H, W) image -> normalised float32 (in_chans, *img_size)."""
        return lambda image: self.normalize(self.resize(image))

    def with_size(self, img_size: Sequence[int]) -> Preprocessing:
        """The same preprocessing at another input size (BoTNet's position tables interpolate)."""
        return dataclasses.replace(self, img_size=(int(img_size[0]), int(img_size[1])))


def preprocessing_from_meta(model: nn.Module, meta: dict[str, Any]) -> Preprocessing:
    """The :class:`Preprocessing` a checkpoint's description asks for (defaults noted in ``defaults_used``)."""
    in_chans, num_classes = model.in_chans, model.num_classes
    if in_chans not in (1, 3):
        raise ValueError(f"reading image files needs a 1- or 3-channel model, {model.name} has {in_chans}")
    defaults = []
    size = meta.get("img_size")
    if size is None:
        defaults.append("img_size")
        size = model.spec.ref_img_size
    elif isinstance(size, int):
        size = (size, size)
    mean, std = meta.get("mean"), meta.get("std")
    if mean is None or std is None:
        defaults.append("mean/std")
        if in_chans == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"checkpoint mean/std have {len(mean)}/{len(std)} values for a {in_chans}-channel model")
    names = meta.get("class_names")
    if names is None:
        defaults.append("class_names")
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"checkpoint has {len(names)} class names for {num_classes} outputs")
    return Preprocessing(
        img_size=(int(size[0]), int(size[1])), mean=tuple(map(float, mean)), std=tuple(map(float, std)),
        in_chans=in_chans, class_names=tuple(map(str, names)), defaults_used=tuple(defaults),
    )


def resized_size(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    """Target (H, W): ``size`` as (H, W), or one int for the shorter side (aspect kept)."""
    if isinstance(size, int):
        size = (size,)
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        return size  # type: ignore[return-value]
    if len(size) != 1:
        raise ValueError(f"image size must be one int (shorter side) or two (H W), got {size}")
    short = size[0]
    if height <= width:
        return short, max(1, round(width * short / height))
    return max(1, round(height * short / width)), short
