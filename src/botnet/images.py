"""The one image reader: any file Pillow opens becomes a uint8 tensor with the model's channels.

Training data (image folders), ``botnet eval``, ``botnet predict``,
``botnet attention`` and detection all read files through
:func:`read_image`, so one file gives the same pixels everywhere. The rules:

* **Orientation**: the EXIF orientation tag is applied (a phone photo stored
  sideways is read upright, as every viewer shows it).
* **Multi-frame files** (GIF, APNG, multi-page TIFF): the first frame.
* **Bit depth**: 16-bit integer images (``I;16*``, and ``I``, which Pillow
  uses for 16-bit PNGs) are scaled by their type's range, 65535 -> 255, not
  by the image's own maximum (which would brighten a dark image) and not
  clipped (which would saturate it to white). 32-bit float images (``F``)
  are taken as [0, 1] when every value lies in it, else as 0..255.
* **Transparency** (RGBA, LA, premultiplied modes, palettes with a
  transparent colour): composited onto white, what a viewer shows on a white
  page. Colours hidden under fully transparent pixels never reach the model.
* **Channels**: 3 -> RGB (grey is repeated); 1 -> luminance (ITU-R 601-2,
  Pillow's ``L``). CMYK, YCbCr, LAB, HSV and palettes are converted to RGB
  first.

Errors name the file: a missing file is a FileNotFoundError, anything Pillow
cannot decode completely (including a truncated JPEG, which
``Image.verify`` lets through) a ValueError.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "IMAGENET_MEAN", "IMAGENET_STD", "read_image", "read_pil", "find_unreadable",
           "image_files"]

# torchvision's ImageNet normalisation: the default for RGB models without their own statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_8bit(image):  # PIL.Image -> PIL.Image (mode L)
    from PIL import Image

    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        finite = array[np.isfinite(array)]
        scale = 1.0 if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else 1 / 255
        array = np.nan_to_num(array, nan=0.0) * 255 * scale
    else:  # 16-bit range
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def _flatten(image, channels: int):  # PIL.Image -> PIL.Image ("L" or "RGB")
    from PIL import Image

    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        image = _to_8bit(image)
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("RGBa", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in _WITH_ALPHA:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode not in ("L", "RGB"):  # CMYK, YCbCr, LAB, HSV, ...
        image = image.convert("RGB")
    return image.convert("L" if channels == 1 else "RGB")


def read_pil(path: str | os.PathLike[str], channels: int = 3, orient: bool = True):
    """Read ``path`` as a decoded Pillow image in mode ``L`` (channels=1) or ``RGB`` (channels=3).

    See the module docstring for the conversion rules. ``orient=False`` keeps
    the stored pixel layout (for annotations made on it, see
    :class:`botnet.detection.data.CocoDetection`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``channels`` is not 1 or 3, or the file cannot be decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"images are read with 1 (grey) or 3 (RGB) channels, not {channels}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file at {path!r}")
    try:
        with Image.open(path) as opened:
            opened.seek(0)  # the first frame of an animation or a multi-page file
            opened.load()  # decode every byte now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(opened) if orient else opened.copy()
            return _flatten(image, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read image {path!r}: it does not decode as an image ({detail})") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {path!r}: {err}") from None


def read_image(path: str | os.PathLike[str], channels: int = 3, orient: bool = True) -> Tensor:
    """Read an image file as a uint8 tensor (channels, H, W), channels 1 or 3.

    The one reader of the package (see the module docstring for every rule).
    """
    array = np.asarray(read_pil(path, channels, orient))
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # a writable, contiguous copy


def _problem(path: str, channels: int) -> str | None:
    try:
        read_pil(path, channels)
    except (ValueError, FileNotFoundError) as err:
        return str(err)
    return None


def find_unreadable(paths: Sequence[str], channels: int = 3, workers: int = 0) -> list[tuple[str, str]]:
    """[(path, reason)] for every file that :func:`read_image` cannot decode completely.

    Every file is fully decoded (not only ``verify``-ed: a truncated JPEG
    passes ``verify`` and fails later, in the middle of an epoch). Decoding
    releases the GIL, so ``workers`` > 0 threads share the work.
    """
    if workers > 0:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems: Iterable[str | None] = list(pool.map(lambda p: _problem(p, channels), paths))
    else:
        problems = [_problem(path, channels) for path in paths]
    return [(path, reason) for path, reason in zip(paths, problems) if reason is not None]


def image_files(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Image files among ``paths``: files as given, folders expanded (sorted, by suffix).

    Raises:
        FileNotFoundError: a path that is neither a file nor a folder, or no
            image file at all.
    """
    files: list[str] = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            files += sorted(
                os.path.join(path, name) for name in os.listdir(path)
                if name.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(path, name))
            )
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"no image or folder at {path!r}")
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files
