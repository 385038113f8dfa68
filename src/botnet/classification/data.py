"""Datasets for training and evaluation: built-in digits, Fashion-MNIST, image folders.

Every builder returns an :class:`ImageData`: a train and a validation
``Dataset`` yielding ``(image (C, H, W) float32 normalised, label int)``,
plus the class names, channels and normalisation, so the trainer and the
evaluator never special-case a dataset.

* ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped with
  scikit-learn, no download), a fixed stratified 80/20 split (seed 0).
* ``fashion-mnist``: the real IDX files (60,000 train / 10,000 test; the
  test set is the validation set), e.g. from Debian's ``dataset-fashion-mnist``.
* ``folder``: torchvision ``ImageFolder`` layout ``DIR/train/<class>/*`` and
  ``DIR/val/<class>/*`` (or only ``DIR/<class>/*``, split 80/20 with a fixed
  seed). Hidden entries (``.thumbnails/``, ``.cache/x.jpg``, ``._x.jpg``) are
  never classes or samples, at any depth (:mod:`botnet.image_files`).
  Listing the files is all that happens before training: nothing is
  decoded up front (on ImageNet a full decode costs ~2 ms per file, 42
  CPU-minutes per process). An image that fails to decode when it is read
  is handled there (``bad_images``): ``"skip"`` gives the next readable
  sample of the list in its place, **with that sample's own label**, and
  appends the path and reason to ``skip_log``; ``"error"`` stops the run
  naming the file and its label. Never a silently wrong label. The full scan
  is still available (``scan_images=True``, :func:`scan_data`: sharded over
  ranks).
* ``wds``: tar shards written by ``botnet data pack`` (:mod:`.shards`),
  streamed: each rank and loader worker reads its own shards.
"""

from __future__ import annotations

import gzip
import itertools
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from ..image_files import image_folder, train_val_folders
from ..images import IMAGENET_MEAN, IMAGENET_STD, find_unreadable, read_image
from .bad_images import append_record

__all__ = [
    "DATASETS",
    "EpochSampler",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "BatchAugment",
    "BatchedLoader",
    "ImageData",
    "InMemoryImages",
    "build_data",
    "build_transforms",
    "read_idx",
    "load_digits_tensors",
    "load_fashion_mnist_tensors",
    "scan_data",
    "scan_images",
]

DATASETS = ("digits", "fashion-mnist", "folder", "wds")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEFAULT_IMG_SIZE = {"digits": 32, "fashion-mnist": 28, "folder": 64, "wds": 64}
# How far a replacement for an unreadable file is looked for (the next files of the list).
_MAX_REPLACEMENT_TRIES = 1000


@dataclass(frozen=True)
class BatchAugment:
    """Training augmentation of an in-memory dataset, applied to whole batches (:mod:`.augment`).

    Attributes:
        padding: random-crop padding in pixels (0: no crop).
        flip: random horizontal flips.
        reprob: random-erasing probability, applied after normalisation (erased pixels become 0,
            the mean).
    """

    padding: int = 0
    flip: bool = False
    reprob: float = 0.0


@dataclass
class ImageData:
    """A classification dataset ready for training.

    Attributes:
        train, val: datasets of ``(image (C, H, W) float32, label)``.
        class_names: one name per label index.
        in_chans: image channels.
        img_size: (H, W) of every image fed to the model.
        mean, std: per-channel normalisation applied by the transforms.
        info: JSON-able facts for config.json (sources, counts, skipped files).
        batch_augment: for in-memory data whose augmentation has a batched form,
            how to augment whole training batches (:class:`BatchedLoader`);
            None: per image, through ``train``'s transforms.
    """

    train: Dataset
    val: Dataset
    class_names: list[str]
    in_chans: int
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)
    batch_augment: BatchAugment | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class InMemoryImages(Dataset):
    """Images held as one uint8 tensor (N, C, H, W) with int64 labels (N,)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"expected {images.shape[0]} labels, got shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision import tv_tensors

        image = tv_tensors.Image(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image.as_subclass(Tensor), int(self.labels[index])


class BatchedLoader:
    """Whole batches of an in-memory dataset: one index gather, batched augmentation, normalisation.

    The order comes from ``sampler`` (e.g. a ``DistributedSampler``: a function
    of (seed, epoch, rank)), the random crops / flips / erasing from
    ``generator`` (the trainer seeds it per epoch), so an epoch replays exactly
    after a resume. Per batch it costs a few tensor operations instead of a
    few Python calls per image (on Fashion-MNIST, 1.4 s per epoch against
    33 s for the per-image torchvision pipeline on one core).

    Yields:
        (images (B, C, H, W) float32 normalised, labels (B,) int64); only full
        batches when ``drop_last``.
    """

    def __init__(self, dataset: InMemoryImages, sampler: Any, batch_size: int, augment: BatchAugment,
                 mean: Sequence[float], std: Sequence[float], generator: torch.Generator,
                 drop_last: bool = True) -> None:
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.augment, self.mean, self.std = augment, tuple(mean), tuple(std)
        self.generator, self.drop_last = generator, drop_last

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self):
        from .augment import augment_batch, normalize_batch, random_erasing_batch

        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        augment = self.augment
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.dataset.images[index]
            if augment.padding or augment.flip:
                images = augment_batch(images, self.generator, padding=augment.padding, flip=augment.flip)
            images = normalize_batch(images, self.mean, self.std)
            if augment.reprob > 0:
                images = random_erasing_batch(images, self.generator, p=augment.reprob, value=0.0)
            yield images, self.dataset.labels[index]


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` whose epochs hold at most ``epoch_size`` samples over all ranks.

    The epoch's order is the sampler's permutation of (seed, epoch); each rank
    takes the first ``epoch_size // num_replicas`` of its share, so a capped
    epoch is the head of that permutation and the next epoch draws a new one
    (``--epoch-size`` on a map-style dataset: short epochs on a big dataset,
    e.g. a 64-image smoke run on ImageNet). ``epoch_size`` None: the whole
    dataset, exactly ``DistributedSampler``.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int = 0,
                 epoch_size: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.cap = self.num_samples if epoch_size is None else min(self.num_samples, epoch_size // num_replicas)

    def __len__(self) -> int:
        return self.cap

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.cap)


# --------------------------------------------------------------------------- transforms


def build_transforms(
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    img_size: tuple[int, int],
    aug: str = "basic",
    flip: bool = True,
    from_files: bool = False,
    reprob: float = 0.0,
) -> Callable:
    """torchvision v2 transforms: augmentation (train only), then float + normalise.

    Args:
        aug: ``"none"``, ``"basic"`` (random crop with padding or random
            resized crop, plus flips where ``flip``) or ``"randaugment"``
            (basic + RandAugment).
        flip: horizontal flips are label-preserving (not for digits).
        from_files: inputs are uint8 images of any size (image folders), so
            resize (eval) or random-resized-crop (train) to ``img_size``.
        reprob: random-erasing probability (train only), after
            normalisation, erased pixels 0 (the mean).
    """
    from torchvision.transforms import v2

    steps: list[Callable] = []
    if from_files:
        steps.append(v2.ToImage())
        if train and aug != "none":
            steps.append(v2.RandomResizedCrop(img_size, scale=(0.35, 1.0), antialias=True))
        else:
            steps += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    if train and aug != "none":
        if not from_files:
            if flip:
                steps.append(v2.RandomCrop(img_size, padding=max(1, img_size[0] // 14)))
            else:
                # Digits: no flips; small shifts, rotations and scale changes keep the label.
                steps.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        if aug == "randaugment":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
        elif aug != "basic":
            raise ValueError(f"aug must be 'none', 'basic' or 'randaugment', got {aug!r}")
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if train and reprob > 0:
        steps.append(v2.RandomErasing(p=reprob, value=0))
    return v2.Compose(steps)


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def _resize_uint8(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a whole uint8 batch once (bilinear), instead of per sample per epoch."""
    if tuple(images.shape[-2:]) == size:
        return images
    resized = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _in_memory(
    name: str,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    class_names: Sequence[str],
    img_size: tuple[int, int],
    aug: str,
    flip: bool,
    info: dict[str, Any],
    norm: tuple[Sequence[float], Sequence[float]] | None,
    reprob: float = 0.0,
) -> ImageData:
    train_images = _resize_uint8(train[0], img_size)
    val_images = _resize_uint8(val[0], img_size)
    # From the training split only, unless given (evaluating a model with its own normalisation).
    mean, std = _channel_stats(train_images) if norm is None else (tuple(norm[0]), tuple(norm[1]))
    batch_augment = None
    if flip and aug in ("none", "basic"):  # crop + flip (and erasing) have batched forms; digits' affine has not
        basic = aug == "basic"
        batch_augment = BatchAugment(padding=max(1, img_size[0] // 14) if basic else 0, flip=basic, reprob=reprob)
    return ImageData(
        train=InMemoryImages(train_images, train[1],
                             build_transforms(True, mean, std, img_size, aug, flip, reprob=reprob)),
        val=InMemoryImages(val_images, val[1], build_transforms(False, mean, std, img_size, aug, flip)),
        class_names=list(class_names),
        in_chans=train_images.shape[1],
        img_size=img_size,
        mean=mean,
        std=std,
        info={"dataset": name, "train_size": len(train[1]), "val_size": len(val[1]), **info},
        batch_augment=batch_augment,
    )


# --------------------------------------------------------------------------- digits


def load_digits_tensors(val_fraction: float = 0.2, seed: int = 0) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """scikit-learn's digits as uint8 (N, 1, 8, 8) images; a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train_idx, val_idx = train_test_split(
        range(len(labels)), test_size=val_fraction, random_state=seed, stratify=digits.target
    )
    train_idx, val_idx = torch.tensor(train_idx), torch.tensor(val_idx)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


# --------------------------------------------------------------------------- IDX (MNIST format)

_IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32,
               0x0E: torch.float64}


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read an IDX file (the MNIST format), gzipped or not, into a tensor.

    Header: two zero bytes, a type code, the number of dimensions, then one
    big-endian uint32 per dimension; the data follow, big-endian.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = itemsize
    for dim in shape:
        expected *= dim
    if len(data) - offset != expected:
        raise ValueError(f"{str(path)!r}: header says shape {shape} ({expected} bytes) but {len(data) - offset} follow")
    array = torch.frombuffer(bytearray(data[offset:]), dtype=dtype)
    if itemsize > 1 and struct.pack("=H", 1) == struct.pack("<H", 1):  # IDX is big-endian
        array = array.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype).view(-1)
    return array.reshape(shape)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    hint = f" (install it with `{FASHION_MNIST_INSTALL}`)" if str(data_dir) == FASHION_MNIST_DIR else ""
    raise FileNotFoundError(
        f"Fashion-MNIST file {str(data_dir / stem)!r}[.gz] not found{hint}; it needs "
        f"{', '.join(s for pair in FASHION_MNIST_FILES.values() for s in pair)} (.gz or not) in --data-dir "
        f"(default {FASHION_MNIST_DIR}, filled by `{FASHION_MNIST_INSTALL}`)"
    )


def load_fashion_mnist_tensors(data_dir: str | os.PathLike[str] = FASHION_MNIST_DIR) -> dict[str, tuple[Tensor, Tensor]]:
    """{"train": (uint8 (60000, 1, 28, 28), labels), "test": (uint8 (10000, 1, 28, 28), labels)}."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST directory {str(data_dir)!r} does not exist; install the real data with "
            f"`{FASHION_MNIST_INSTALL}` (files go to {FASHION_MNIST_DIR}) or pass --data-dir"
        )
    splits = {}
    for split, (image_stem, label_stem) in FASHION_MNIST_FILES.items():
        images = read_idx(_find_idx(data_dir, image_stem))
        labels = read_idx(_find_idx(data_dir, label_stem))
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{split} files in {str(data_dir)!r} disagree: images {tuple(images.shape)}, labels {tuple(labels.shape)}"
            )
        if labels.numel() and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{split} labels in {str(data_dir)!r} go up to {int(labels.max())}; expected 0..9")
        splits[split] = (images.unsqueeze(1).to(torch.uint8), labels.long())
    return splits


# --------------------------------------------------------------------------- image folders


def scan_images(paths: Sequence[str], channels: int = 3, workers: int = 0) -> list[tuple[str, str]]:
    """[(path, reason)] for every file that cannot be decoded completely (:func:`botnet.images.find_unreadable`)."""
    return find_unreadable(paths, channels, workers)


class _Samples(Dataset):
    """(path, label) samples read by :func:`botnet.images.read_image`, decoded when they are read.

    A file that does not decode goes to ``bad_images``: ``"error"`` raises a
    ValueError naming the file and its label; ``"skip"`` returns the next
    readable sample of the list instead (``index + 1``, ``index + 2``, ...,
    wrapping), with its own label, so the replacement is a function of the
    index alone (exact resume holds) and never carries another file's label.
    Each unreadable file met is appended to ``skip_log`` (a JSON line:
    path, label, reason), if set; every loader worker appends to the same
    file, and the trainer gathers these files from every rank.
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Callable, channels: int,
                 bad_images: str = "error", skip_log: str | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.channels = channels
        self.bad_images = bad_images
        self.skip_log = skip_log

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, indices: Sequence[int]) -> _Samples:
        """The samples at ``indices``, with this dataset's transform and unreadable-file handling."""
        return _Samples([self.samples[i] for i in indices], self.transform, self.channels, self.bad_images,
                        self.skip_log)

    def drop(self, paths: set[str]) -> None:
        """Leave out the samples of ``paths`` (found unreadable by a scan)."""
        self.samples = [sample for sample in self.samples if sample[0] not in paths]

    def _read(self, index: int) -> Tensor:
        # Channels-last strides: the same pixels, no transposing copy, faster uint8 resampling;
        # the transformed image is made contiguous again, so batches are what they always were.
        return read_image(self.samples[index][0], self.channels, contiguous=False)

    def _record(self, path: str, label: int, reason: str) -> None:
        if self.skip_log is not None:
            append_record(self.skip_log, {"path": path, "label": label, "reason": reason})

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision import tv_tensors

        path, label = self.samples[index]
        try:
            image = self._read(index)
        except (ValueError, OSError) as err:
            if self.bad_images == "error":
                raise ValueError(f"{err} (label {label}; --bad-images skip trains on the next readable image "
                                 "in its place)") from None
            self._record(path, label, str(err))
            image, label = self._replacement(index)
        return self.transform(tv_tensors.Image(image)).as_subclass(Tensor).contiguous(), label

    def _replacement(self, index: int) -> tuple[Tensor, int]:
        count = len(self.samples)
        for offset in range(1, min(count, _MAX_REPLACEMENT_TRIES + 1)):
            other = (index + offset) % count
            try:
                return self._read(other), self.samples[other][1]
            except (ValueError, OSError) as err:
                self._record(self.samples[other][0], self.samples[other][1], str(err))
        raise ValueError(f"no readable image among the {min(count, _MAX_REPLACEMENT_TRIES + 1)} files from "
                         f"{self.samples[index][0]!r} on; is the dataset damaged?")


def scan_data(data: ImageData, bad_images: str, workers: int = 0, rank: int = 0, world_size: int = 1,
              gather: Callable[[list[tuple[str, str]]], list[list[tuple[str, str]]]] | None = None,
              ) -> list[tuple[str, str]]:
    """Decode every file of an image-folder dataset before training; drop (or stop at) the unreadable ones.

    The files are dealt round-robin to ``world_size`` ranks; each decodes its
    share on ``workers`` threads, and ``gather`` (e.g. an all-gather over
    the process group) brings every rank's findings to every rank, so the
    scan of N files costs N / world_size decodes per process.

    Returns:
        [(path, reason)] of every unreadable file (also in ``data.info["skipped_images"]``).

    Raises:
        ValueError: ``bad_images == "error"`` and a file is unreadable (listing up to 10).
    """
    if not isinstance(data.train, _Samples) or not isinstance(data.val, _Samples):
        raise ValueError("--scan-images is for --dataset folder (files decoded when read)")
    paths = sorted({path for part in (data.train, data.val) for path, _ in part.samples})
    mine = find_unreadable(paths[rank::world_size], data.in_chans, workers)
    bad = sorted({item for found in gather(mine) for item in found} if gather is not None else set(mine))
    if bad and bad_images == "error":
        listing = "; ".join(f"{path} ({reason})" for path, reason in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"{len(bad)} unreadable image(s): {listing}{more} (use --bad-images skip to leave them out)")
    bad_paths = {path for path, _ in bad}
    for part in (data.train, data.val):
        part.drop(bad_paths)
    data.info.update(train_size=len(data.train), val_size=len(data.val),
                     skipped_images=[{"path": p, "reason": r} for p, r in bad])
    return bad


def _split_indices(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import train_test_split

    counts = torch.bincount(torch.tensor(labels))
    stratify = labels if int(counts[counts > 0].min()) >= 2 else None
    return train_test_split(list(range(len(labels))), test_size=val_fraction, random_state=seed, stratify=stratify)


def _file_transforms(
    img_size: tuple[int, int], aug: str, in_chans: int, norm: tuple[Sequence[float], Sequence[float]] | None,
    reprob: float,
) -> tuple[tuple[float, ...], tuple[float, ...], Callable, Callable]:
    """(mean, std, train transform, val transform) of image files of any size (folders and shards).

    ``norm`` (mean, std) when given (a checkpoint's), else ImageNet's for RGB and 0.5 / 0.5 for grey.
    """
    if norm is not None:
        mean, std = tuple(norm[0]), tuple(norm[1])
    else:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,), (0.5,))
    return (mean, std, build_transforms(True, mean, std, img_size, aug, True, from_files=True, reprob=reprob),
            build_transforms(False, mean, std, img_size, aug, True, from_files=True))


def _load_folder(
    data_dir: Path, img_size: tuple[int, int], aug: str, bad_images: str, val_fraction: float, seed: int,
    in_chans: int,
    norm: tuple[Sequence[float], Sequence[float]] | None,
    workers: int = 0,
    reprob: float = 0.0,
) -> ImageData:
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {str(data_dir)!r} is not a directory (expected an ImageFolder layout)")
    if (data_dir / "train").is_dir():
        classes, train_samples, val_dir, val_samples = train_val_folders(data_dir)
        if val_dir is None or val_samples is None:
            raise FileNotFoundError(f"{str(data_dir)!r} has train/ but no val/ (or validation/, test/) directory")
        split = "train/ and val/ directories"
    else:
        classes, samples = image_folder(data_dir)
        train_idx, val_idx = _split_indices([label for _, label in samples], val_fraction, seed)
        train_samples = [samples[i] for i in sorted(train_idx)]
        val_samples = [samples[i] for i in sorted(val_idx)]
        split = f"random {1 - val_fraction:.0%}/{val_fraction:.0%} split, seed {seed}"
    mean, std, train_transform, val_transform = _file_transforms(img_size, aug, in_chans, norm, reprob)
    return ImageData(
        train=_Samples(train_samples, train_transform, in_chans, bad_images),
        val=_Samples(val_samples, val_transform, in_chans, bad_images),
        class_names=classes,
        in_chans=in_chans,
        img_size=img_size,
        mean=mean,
        std=std,
        info={
            "dataset": "folder", "data_dir": str(data_dir), "split": split, "train_size": len(train_samples),
            "val_size": len(val_samples),
        },
    )


# --------------------------------------------------------------------------- tar shards


def _shard_sources(data_dir: str, val_data_dir: str | None) -> tuple[Any, Any]:
    """What :func:`.shards.shard_spec` reads for the train and val splits: a pack directory (its
    ``index.json``) for both, or two shard patterns (``--data-dir`` and ``--val-data-dir``)."""
    if os.path.isdir(data_dir) or os.path.basename(data_dir) == "index.json":
        return data_dir, val_data_dir or data_dir
    if not any(mark in data_dir for mark in ("{", ":", ".tar")):  # neither a directory nor a shard pattern
        raise FileNotFoundError(f"--data-dir {data_dir!r}: no such directory (expected a `botnet data pack` "
                                "directory or a pattern of .tar shards)")
    if val_data_dir is None:
        raise ValueError(f"--data-dir {data_dir!r} is not a `botnet data pack` directory; as a pattern of training "
                         "shards (e.g. '/data/train-{000000..001281}.tar' or 'pipe:aws s3 cp s3://bucket/"
                         "train-{000000..001281}.tar -') it needs --val-data-dir, the validation shards")
    return data_dir, val_data_dir


def _load_shards(
    data_dir: str, img_size: tuple[int, int], aug: str, bad_images: str, seed: int, in_chans: int,
    norm: tuple[Sequence[float], Sequence[float]] | None, reprob: float, epoch_size: int | None, rank: int,
    world_size: int, batch_size: int | None, num_classes: int | None, evaluation: bool, val_data_dir: str | None,
) -> ImageData:
    from .shards import ShardDataset, shard_spec

    train_source, val_source = _shard_sources(data_dir, val_data_dir)
    train_spec, val_spec = shard_spec(train_source, "train"), shard_spec(val_source, "val")
    classes = train_spec.classes
    if classes is None:  # a pattern without index.json: the class count must be given
        if num_classes is None:
            raise ValueError(f"shards {data_dir!r} have no index.json to give the classes: pass --num-classes")
        classes = tuple(str(i) for i in range(num_classes))
    elif num_classes is not None and num_classes != len(classes):
        raise ValueError(f"--num-classes {num_classes} but {data_dir!r}/index.json lists {len(classes)} classes")
    if val_spec.classes is not None and val_spec.classes != classes:
        raise ValueError(f"the train and val shards of {data_dir!r} list different classes")
    if not evaluation and epoch_size is None and train_spec.count is None:
        raise ValueError(f"--dataset wds from {data_dir!r} (no index.json gives the count) needs --epoch-size: the "
                         "number of training images per epoch, so that every rank takes the same number of steps")
    mean, std, train_transform, val_transform = _file_transforms(img_size, aug, in_chans, norm, reprob)
    common = {"seed": seed, "rank": rank, "world_size": world_size, "bad_images": bad_images, "channels": in_chans,
              "classes": classes}
    train = ShardDataset(train_spec, train_transform, epoch_size=epoch_size, batch_size=batch_size,
                         once=evaluation, shuffle=0 if evaluation else 1000, **common)
    val = ShardDataset(val_spec, val_transform, once=True, shuffle=0, **common)
    return ImageData(
        train=train, val=val, class_names=list(classes), in_chans=in_chans, img_size=img_size, mean=mean, std=std,
        info={"dataset": "wds", "data_dir": data_dir, "split": "train and val shards",
              "train_size": train.epoch_size if not evaluation else train_spec.count, "val_size": val_spec.count,
              "train_shards": len(train_spec.urls), "val_shards": len(val_spec.urls)},
    )


# --------------------------------------------------------------------------- entry point


def build_data(
    dataset: str = "digits",
    data_dir: str | os.PathLike[str] | None = None,
    img_size: int | tuple[int, int] | None = None,
    aug: str = "basic",
    bad_images: str = "skip",
    val_fraction: float = 0.2,
    seed: int = 0,
    in_chans: int = 3,
    norm: tuple[Sequence[float], Sequence[float]] | None = None,
    workers: int = 0,
    reprob: float = 0.0,
    *,
    scan_images: bool = False,
    epoch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int | None = None,
    num_classes: int | None = None,
    evaluation: bool = False,
    val_data_dir: str | os.PathLike[str] | None = None,
) -> ImageData:
    """Build the train/validation datasets for ``dataset`` (see the module docstring).

    Args:
        data_dir: Fashion-MNIST IDX directory or image-folder root.
        img_size: side (or (H, W)) of the model input; default 32 for digits
            (upsampled from 8), 28 for Fashion-MNIST, 64 for folders.
        aug: training augmentation, see :func:`build_transforms`.
        bad_images, val_fraction, seed, in_chans: image folders only
            (the digits split is always seed 0).
        norm: (mean, std) to normalise with instead of the dataset's own
            statistics (e.g. the values a checkpoint was trained with).
        workers: threads that decode image folders' files in the scan
            before training (0: in this thread).
        reprob: random-erasing probability of training images.
        scan_images: image folders: decode every file now (:func:`scan_data`,
            one process) and leave out or stop at the unreadable ones.
        epoch_size, rank, world_size, batch_size: ``wds``: images per epoch
            over all ranks (default: the count in ``index.json``), this
            process's place, and the per-process batch (each rank then takes
            the same whole number of steps); see :class:`.shards.ShardDataset`.
        num_classes: ``wds`` from a shard pattern without ``index.json``.
        val_data_dir: ``wds`` when ``data_dir`` is a pattern of training
            shards: the validation shards (a pattern, a list, a pack directory).
        evaluation: ``wds``: read both splits once, in shard order (``botnet eval``).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    size = img_size if img_size is not None else DEFAULT_IMG_SIZE[dataset]
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if dataset == "digits":
        train, val = load_digits_tensors()
        return _in_memory(
            "digits", train, val, [str(d) for d in range(10)], size, aug, flip=False,
            info={"source": "sklearn.datasets.load_digits", "split": "stratified 80/20, seed 0"}, norm=norm,
            reprob=reprob,
        )
    if dataset == "fashion-mnist":
        root = Path(data_dir) if data_dir else Path(FASHION_MNIST_DIR)
        splits = load_fashion_mnist_tensors(root)
        return _in_memory(
            "fashion-mnist", splits["train"], splits["test"], FASHION_MNIST_CLASSES, size, aug, flip=True,
            info={"data_dir": str(root), "split": "official train (60k) / test (10k) as validation"}, norm=norm,
            reprob=reprob,
        )
    if bad_images not in ("skip", "error"):
        raise ValueError(f"bad_images must be 'skip' or 'error', got {bad_images!r}")
    if in_chans not in (1, 3):
        raise ValueError(f"image files are read as 1 (grey) or 3 (RGB) channels, got in_chans={in_chans}")
    if dataset == "wds":
        if data_dir is None:
            raise ValueError("--dataset wds needs --data-dir (a `botnet data pack` directory or a shard pattern)")
        return _load_shards(os.fspath(data_dir), size, aug, bad_images, seed, in_chans, norm, reprob, epoch_size,
                            rank, world_size, batch_size, num_classes, evaluation,
                            None if val_data_dir is None else os.fspath(val_data_dir))
    if data_dir is None:
        raise ValueError("--dataset folder needs --data-dir (an ImageFolder root)")
    data = _load_folder(Path(data_dir), size, aug, bad_images, val_fraction, seed, in_chans, norm, workers, reprob)
    if scan_images:
        scan_data(data, bad_images, workers)
    return data
