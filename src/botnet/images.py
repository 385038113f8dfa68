"""The one image reader: any file Pillow opens becomes a uint8 tensor with the model's channels.

Training data (image folders and tar shards), ``botnet eval``,
``botnet predict``, ``botnet attention`` and detection all read files through
:func:`read_image` (or :func:`decode_image` for bytes held in memory, e.g.
a shard's entries: the same code path), so one file gives the same pixels
everywhere. The rules:

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

import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "IMAGENET_MEAN", "IMAGENET_STD", "read_image", "read_pil", "decode_image", "decode_pil",
           "pil_to_tensor", "find_unreadable"]

# torchvision's ImageNet normalisation: the default for RGB models without their own statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = 0x0112  # the EXIF tag


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
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)  # convert() copies even to its own mode


def _decode(source, name: str, channels: int, orient: bool):  # file path or binary file object -> PIL.Image
    """Open, fully decode and flatten ``source``: the code path shared by files and bytes."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as opened:
            opened.seek(0)  # the first frame of an animation or a multi-page file
            opened.load()  # decode every byte now: a truncated file fails here, not later
            # exif_transpose copies even when there is nothing to turn: only call it when there is.
            # A loaded image stays valid once its file is closed, so no copy is needed otherwise.
            turned = orient and opened.getexif().get(_ORIENTATION, 1) not in (None, 1)
            image = ImageOps.exif_transpose(opened) if turned else opened
            return _flatten(image, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read image {name!r}: it does not decode as an image ({detail})") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {name!r}: {err}") from None


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"images are read with 1 (grey) or 3 (RGB) channels, not {channels}")


def read_pil(path: str | os.PathLike[str], channels: int = 3, orient: bool = True):
    """Read ``path`` as a decoded Pillow image in mode ``L`` (channels=1) or ``RGB`` (channels=3).

    See the module docstring for the conversion rules. ``orient=False`` keeps
    the stored pixel layout (for annotations made on it, see
    :class:`botnet.detection.data.CocoDetection`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``channels`` is not 1 or 3, or the file cannot be decoded.
    """
    _check_channels(channels)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file at {path!r}")
    return _decode(path, path, channels, orient)


def decode_pil(data: bytes | BinaryIO, channels: int = 3, orient: bool = True, name: str = "<bytes>"):
    """Decode an encoded image held in memory (``bytes``) or a binary file object, like :func:`read_pil`.

    The same code path as :func:`read_pil` (Pillow sniffs the format from the
    content, not a file name), so the bytes of a file decode to exactly the
    pixels the file gives: this is how images stored in tar shards are read.
    ``name`` (e.g. the shard and key) is what error messages show.

    Raises:
        ValueError: ``channels`` is not 1 or 3, or the data cannot be decoded.
    """
    _check_channels(channels)
    return _decode(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data, name, channels,
                   orient)


def pil_to_tensor(image, contiguous: bool = True) -> Tensor:
    """A flattened Pillow image (``L`` or ``RGB``) as a writable uint8 tensor (channels, H, W).

    ``contiguous=False`` returns the (C, H, W) view of the (H, W, C) pixel
    array instead (channels-last strides): the same values without the
    transposing copy, and torchvision's uint8 antialiased resampling is
    faster on it (the ImageNet training transforms on 100 photos of 500x375,
    one core: 1.09 ms against 1.58 ms an image, identical output; see
    ``notes/input_pipeline.md``).
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if not contiguous:
        return torch.from_numpy(array if array.flags.writeable else array.copy()).permute(2, 0, 1)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # a writable, contiguous copy


def read_image(path: str | os.PathLike[str], channels: int = 3, orient: bool = True,
               contiguous: bool = True) -> Tensor:
    """Read an image file as a uint8 tensor (channels, H, W), channels 1 or 3.

    The one reader of the package (see the module docstring for every rule).
    ``contiguous=False``: channels-last strides, same values (see :func:`pil_to_tensor`).
    """
    return pil_to_tensor(read_pil(path, channels, orient), contiguous)


def decode_image(data: bytes | BinaryIO, channels: int = 3, orient: bool = True, name: str = "<bytes>",
                 contiguous: bool = True) -> Tensor:
    """Encoded image bytes (or a binary file object) as a uint8 tensor (channels, H, W): :func:`decode_pil`.

    Gives the same tensor as :func:`read_image` on a file holding these bytes.
    """
    return pil_to_tensor(decode_pil(data, channels, orient, name), contiguous)


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
