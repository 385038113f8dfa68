"""An image file as an array to draw."""

from __future__ import annotations

import os

import numpy as np

from ..images import read_pil

__all__ = ["load_image"]


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
