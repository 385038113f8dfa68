"""Reading an image file into what a model expects."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..images import IMAGENET_MEAN, IMAGENET_STD, read_pil

__all__ = ["load_image", "resized_size", "to_model_input", "IMAGENET_MEAN", "IMAGENET_STD"]



def load_image(path: str | os.PathLike[str], channels: int = 3) -> np.ndarray:
    """Read an image file as float32 in [0, 1], (H, W, channels).

    The package's one reader (:func:`botnet.images.read_pil`: EXIF
    orientation, first frame, 16-bit scaled by its range, transparency
    composited onto white, every Pillow mode), as float.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an image PIL can read, or ``channels``
            is not 1 or 3.
    """
    array = np.asarray(read_pil(path, channels), dtype=np.float32) / 255.0
    return array[..., None] if channels == 1 else array


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


def to_model_input(
    image: np.ndarray,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[Tensor, np.ndarray]:
    """Resize (antialiased bilinear) and normalise an (H, W, C) [0, 1] image.

    Returns:
        the model input (1, C, size[0], size[1]) and the resized image
        (size[0], size[1], C) in [0, 1] for display.
    """
    from torchvision.transforms.v2 import functional as TF

    channels = image.shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for a {channels}-channel image")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    tensor = TF.resize(tensor, list(size), antialias=True).clamp(0, 1)
    shown = tensor.permute(1, 2, 0).numpy()
    normalised = TF.normalize(tensor, list(mean), list(std))
    return normalised.unsqueeze(0), shown
