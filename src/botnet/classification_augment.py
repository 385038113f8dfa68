"""Batched data augmentation for small images held in memory (Fashion-MNIST, digits).

Why: a data set like Fashion-MNIST (60,000 x 1 x 28 x 28 uint8 = 47 MB) fits in
memory as one tensor. Augmenting it one image at a time (torchvision v2
transforms in ``Dataset.__getitem__``, collated by a ``DataLoader``) costs a few
Python calls per image, which on a 2-core CPU is a sizeable share of a small
network's training step. The functions here augment a WHOLE batch with a handful
of tensor operations instead: one padded copy plus two ``gather`` calls for the
random crops, one ``torch.where`` for the flips, one mask for random erasing.

Determinism: every random number comes from the ``torch.Generator`` passed in,
and each function draws the same NUMBER of values for a batch of a given size
whatever those values turn out to be (no rejection loops). So the output is a
function of (input, generator state), and a training engine that stores the
generator state (``generator.get_state()``) resumes the exact same augmentation
stream. Random draws are made on the CPU generator and moved to the images'
device, so the stream does not depend on the device either.

All functions keep the dtype of their input (uint8 in, uint8 out; float in,
float out) and never modify their input in place. Labels are untouched: crops of
at most ``padding`` pixels, horizontal mirrors and erased patches keep the class
of a clothing item (not of a digit: do not flip digits).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "random_crop_batch",
    "random_hflip_batch",
    "random_erasing_batch",
    "augment_batch",
    "normalize_batch",
    "hflip_tta_logits",
    "shuffled_batches",
]


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")


def random_crop_batch(images: Tensor, padding: int, generator: torch.Generator, fill: int | float = 0) -> Tensor:
    """Random ``H x W`` crops of the images padded by ``padding`` pixels on every side.

    The same as torchvision's ``RandomCrop(size=(H, W), padding=padding, fill=fill)``
    applied to every image with its own offset: each output is the window
    ``padded[:, dy:dy + H, dx:dx + W]`` of its zero-padded (``fill``) image, with
    ``dy, dx`` drawn uniformly from ``0 .. 2 * padding`` (a shift of at most
    ``padding`` pixels each way).

    Args:
        images: (B, C, H, W), any dtype.
        padding: pixels added on each side (0: returns a copy).
        generator: source of the 2 * B offsets.
        fill: value of the padding.

    Returns:
        (B, C, H, W), same dtype and device as ``images``.
    """
    _check_images(images)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, channels, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(images.device)
    if padding == 0:
        return images.clone()
    padded = images.new_full((batch, channels, height + 2 * padding, width + 2 * padding), fill)
    padded[:, :, padding : padding + height, padding : padding + width] = images
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # (B, W)
    # Two gathers: pick each image's H rows, then its W columns.
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def random_hflip_batch(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p`` (B draws, one per image).

    Args:
        images: (B, C, H, W).

    Returns:
        (B, C, H, W): ``images[b].flip(-1)`` where drawn, ``images[b]`` elsewhere.
    """
    _check_images(images)
    flip = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_erasing_batch(
    images: Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: int | float = 0,
) -> Tensor:
    """Random erasing (Zhong et al. 2017): with probability ``p``, one rectangle per image is set to ``value``.

    As torchvision's ``RandomErasing``: the rectangle covers a fraction of the
    image drawn uniformly from ``scale``, with aspect ratio (height / width)
    drawn log-uniformly from ``ratio``, at a uniformly drawn position. Where
    torchvision retries up to 10 times when the rectangle does not fit, here
    its sides are clipped to the image (5 draws per image, always), so the
    number of random values does not depend on their outcome.

    On Fashion-MNIST it is the augmentation behind the best published numbers
    (WRN-28-10 95.9 % -> 96.3 %). Erase after normalisation with ``value=0``
    (the mean pixel), or on uint8 images with the mean's uint8 value.

    Args:
        images: (B, C, H, W), any dtype.
        p: probability that an image gets a rectangle.
        scale: range of the erased area as a fraction of H * W.
        ratio: range of the rectangle's aspect ratio.
        value: what erased pixels become.

    Returns:
        (B, C, H, W), same dtype and device.
    """
    _check_images(images)
    batch, _, height, width = images.shape
    u = torch.rand(5, batch, generator=generator, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    h = torch.sqrt(area * aspect).round().clamp(1, height).long()
    w = torch.sqrt(area / aspect).round().clamp(1, width).long()
    top = (u[2] * (height - h + 1)).floor().long().clamp(max=height - 1)
    left = (u[3] * (width - w + 1)).floor().long().clamp(max=width - 1)
    apply = u[4] < p
    ys = torch.arange(height)
    xs = torch.arange(width)
    inside_y = (ys[None, :] >= top[:, None]) & (ys[None, :] < (top + h)[:, None])  # (B, H)
    inside_x = (xs[None, :] >= left[:, None]) & (xs[None, :] < (left + w)[:, None])  # (B, W)
    mask = (inside_y[:, :, None] & inside_x[:, None, :] & apply[:, None, None])[:, None].to(images.device)
    return images.masked_fill(mask, value)


def augment_batch(
    images: Tensor,
    generator: torch.Generator,
    padding: int = 2,
    flip: bool = True,
    erasing: float = 0.0,
    erasing_value: int | float = 0,
) -> Tensor:
    """The Fashion-MNIST training augmentation for a whole batch: crop, flip, erase.

    Random crop with ``padding`` (zero fill), horizontal flip with probability
    0.5 (if ``flip``), random erasing with probability ``erasing`` (if > 0).
    Draws from ``generator`` in that fixed order, so the result is a function
    of the input and the generator's state.

    Args:
        images: (B, C, H, W), typically uint8 straight from the in-memory data set.
        generator: a CPU ``torch.Generator``.
        padding: crop padding in pixels (0: no crop).
        flip: mirror half of the images left-right.
        erasing: probability of random erasing (0: none; draws nothing).
        erasing_value: value of erased pixels, in the images' units.

    Returns:
        (B, C, H, W), same dtype and device as ``images``.
    """
    out = random_crop_batch(images, padding, generator) if padding > 0 else images
    if flip:
        out = random_hflip_batch(out, generator)
    if erasing > 0:
        out = random_erasing_batch(out, generator, p=erasing, value=erasing_value)
    return out


def normalize_batch(images: Tensor, mean: float | tuple[float, ...], std: float | tuple[float, ...],
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (B, C, H, W) -> float ``(x / 255 - mean) / std``, mean and std per channel in [0, 1] units."""
    _check_images(images)
    channels = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=dtype, device=images.device).reshape(-1)
    std_t = torch.as_tensor(std, dtype=dtype, device=images.device).reshape(-1)
    if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
        raise ValueError(f"mean/std need 1 or {channels} values, got {mean_t.numel()} and {std_t.numel()}")
    scale = 1.0 / (255.0 * std_t)
    shift = mean_t / std_t
    return images.to(dtype).mul_(scale.view(1, -1, 1, 1)).sub_(shift.view(1, -1, 1, 1))


def hflip_tta_logits(model: torch.nn.Module, images: Tensor) -> Tensor:
    """Test-time augmentation: the mean of the logits of each image and of its mirror image.

    One forward pass on the batch and its flipped copy concatenated; (B, ...) -> (B, num_classes).
    """
    logits = model(torch.cat([images, images.flip(-1)]))
    return 0.5 * (logits[: images.shape[0]] + logits[images.shape[0] :])


def shuffled_batches(num_samples: int, batch_size: int, generator: torch.Generator,
                     drop_last: bool = True) -> Iterator[Tensor]:
    """Index tensors of one epoch's batches, in the order of ``torch.randperm(num_samples, generator=generator)``.

    With ``drop_last`` every batch has ``batch_size`` indices (BatchNorm statistics
    stay comparable and a compiled model sees one shape).
    """
    order = torch.randperm(num_samples, generator=generator)
    stop = num_samples - num_samples % batch_size if drop_last else num_samples
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
