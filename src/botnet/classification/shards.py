"""Tar shards (the WebDataset format) for ImageNet-scale training: pack an image folder, stream it back.

An image folder of a million files is slow to list, to copy and to read from
network storage; a few hundred tar files of ~100 MB each are read
sequentially, from local disks or object stores alike. This is the format
timm reads as ``wds/`` and that ``webdataset`` streams; the choice over
litdata, mosaicml-streaming and HF datasets was measured
(``notes/streaming_choice.md``).

Layout written by :func:`pack_folder` (``botnet data pack``)::

    OUT/train-000000.tar ...    entries <key>.cls (class index, ASCII) and <key>.jpg (the file's own bytes)
    OUT/val-000000.tar ...
    OUT/index.json              classes, per split: shard names, counts, per-class counts, per-shard sizes
    OUT/_info.json              the same splits in timm's format: ``timm.data.create_dataset("wds/NAME", root=OUT)``

:class:`ShardDataset` streams ``(image, label)`` from such a directory, a
list of shard URLs, a brace pattern (``train-{000000..000127}.tar``) or
``pipe:`` commands (``pipe:aws s3 cp s3://bucket/train-000000.tar -``).
What ``webdataset`` does here (not rewritten): URL and brace expansion,
opening files and ``pipe:`` streams, reading tar streams and grouping entries
into samples, per-worker splitting, resampled shard draws, the shuffle
buffer, and writing tar files. What this module adds, and why: the
per-(seed, epoch) shard order and an exact per-rank sample count (so that
every rank takes the same number of steps), errors that name the shard and
key, checks against ``index.json`` (labels, counts, sizes: a tar cut at an
entry boundary otherwise reads as a shorter, valid archive), and decoding
through the package's one image reader (:func:`botnet.images.decode_image`).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from ..image_files import train_val_folders
from ..images import decode_image
from .bad_images import append_record

__all__ = ["INDEX", "ShardDataset", "ShardSpec", "pack_folder", "shard_loader", "shard_spec"]

INDEX = "index.json"
TIMM_INFO = "_info.json"  # the split description timm's webdataset reader (``wds/`` datasets) looks for
FORMAT = "botnet-wds"
VERSION = 1
SPLITS = ("train", "val")
# Entry extensions read as the image of a sample (the first present wins).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "gif")
_JPEG_MAGIC = b"\xff\xd8\xff"
_SHARD_NAME = "{split}-{index:06d}.tar"
# Shards of the same shard whose last good sample is kept for the "skip" policy (bounded memory).
_RECENT_SHARDS = 64


def _wds() -> Any:
    try:
        import webdataset
    except ImportError:
        raise ImportError("tar shards need the webdataset package: pip install 'botnet[wds]'") from None
    return webdataset


# --------------------------------------------------------------------------- packing


def _image_ext(data: bytes, path: Path) -> str:
    """The entry extension: ``jpg`` for JPEG content (whatever the file is called), else the file's own."""
    if data.startswith(_JPEG_MAGIC):
        return "jpg"
    ext = path.suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory")
    if out.is_dir():
        foreign = [entry.name for entry in os.scandir(out) if not _is_own_file(entry.name)]
        if foreign:
            raise ValueError(f"--out {str(out)!r} holds other files ({', '.join(sorted(foreign)[:3])}); "
                             "give an empty or new directory, or one written by `botnet data pack`")


def _is_own_file(name: str) -> bool:
    if name in (INDEX, TIMM_INFO) or any(name.startswith(f".{own}.") for own in (INDEX, TIMM_INFO)):
        return True  # the indexes, and their temporary files
    if name.startswith(".") and ".tar." in name:
        return True  # temporary shard files of an interrupted pack
    split, _, rest = name.partition("-")
    return split in SPLITS and rest.endswith(".tar") and rest[:-4].isdigit()


def pack_folder(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    shard_size: int = 1000,
    progress: bool | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Pack an ImageFolder tree into tar shards plus ``index.json`` (see the module docstring).

    Args:
        root: ``ROOT/train/<class>/*`` and optionally ``ROOT/val/<class>/*``
            (or ``validation/``, ``test/``). Classes are the sorted
            sub-directory names of ``train/``, as torchvision's ImageFolder
            gives them; files are ImageFolder's (its extensions, a sorted walk),
            and entries whose name starts with ``.`` are ignored at every depth.
        out: output directory: new, empty, or an earlier pack (replaced).
        shard_size: samples per shard (the last one of a split may hold fewer).
        progress: a progress bar over files (None: on a terminal only; False: never).
        seed: the training split is written in a fixed random order (this seed)
            so that each shard mixes classes and a streaming shuffle buffer has
            something to mix; the validation split keeps the sorted order.

    Each entry is the file's original bytes (JPEG content is stored as
    ``.jpg`` and never re-encoded; other formats keep their extension). The
    key ``{split}-{n:08d}`` is stable: ``n`` is the file's position in
    ImageFolder's sorted sample list of that split. Each shard is written to a
    temporary file and renamed, and ``index.json`` (and timm's ``_info.json``)
    are removed first and written last, so a killed pack never leaves a
    partial shard under a final name nor an index describing shards that are
    not there.

    Returns:
        the index (the content of ``OUT/index.json``).

    Raises:
        FileNotFoundError: no ``ROOT/train``, no class directory, or a class
            directory without images.
        ValueError: classes differ between splits, ``shard_size`` < 1, or
            ``out`` is a file or a directory holding other files.
    """
    from ..runtime.store import atomic_write
    from ..runtime.console import Progress

    wds = _wds()
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory (expected ROOT/train/<class>/*)")
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{str(root)!r} has no train/ directory (expected ROOT/train/<class>/* and "
                                "ROOT/val/<class>/*)")
    classes, train, _, val = train_val_folders(root)
    samples = {split: [(Path(path), label) for path, label in listed]
               for split, listed in (("train", train), ("val", val)) if listed is not None}
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (INDEX, TIMM_INFO):  # no index while the shards change
        (out / name).unlink(missing_ok=True)

    index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "classes": classes, "splits": {},
                             "shard_size": shard_size}
    written: set[str] = set()
    with Progress(enabled=progress is not False) as bar:
        for split, items in samples.items():
            order = list(range(len(items)))
            if split == "train":
                random.Random(seed).shuffle(order)
            bar.start(f"pack {split}", len(items))
            names, counts, sizes = [], [], []
            for start in range(0, len(order), shard_size):
                name = _SHARD_NAME.format(split=split, index=start // shard_size)
                chunk = order[start : start + shard_size]

                def write(tmp: Path, chunk: list[int] = chunk, items: list = items, split: str = split) -> None:
                    # mtime an int: a float (webdataset's default, time.time()) adds a PAX header to every entry.
                    with open(tmp, "wb") as handle, wds.TarWriter(handle, encoder=False, mtime=0) as sink:
                        for n in chunk:
                            path, label = items[n]
                            data = path.read_bytes()
                            sink.write({"__key__": f"{split}-{n:08d}", _image_ext(data, path): data,
                                        "cls": str(label).encode("ascii")})
                            bar.update(1)

                atomic_write(out / name, write)
                names.append(name)
                counts.append(len(chunk))
                sizes.append((out / name).stat().st_size)
                written.add(name)
            bar.stop()
            per_class = [0] * len(classes)
            for _, label in items:
                per_class[label] += 1
            index["splits"][split] = {"shards": names, "count": len(items), "per_class": per_class,
                                      "shard_counts": counts, "shard_bytes": sizes}
    for entry in os.scandir(out):  # shards of an earlier, larger pack
        if entry.name not in (INDEX, TIMM_INFO) and _is_own_file(entry.name) and entry.name not in written:
            os.unlink(entry.path)
    timm_info = {"num_classes": len(classes), "splits": {
        split: {"name": split, "num_samples": entry["count"], "filenames": entry["shards"],
                "shard_lengths": entry["shard_counts"]}
        for split, entry in index["splits"].items()}}
    atomic_write(out / TIMM_INFO, lambda tmp: tmp.write_text(json.dumps(timm_info, indent=1) + "\n"))
    atomic_write(out / INDEX, lambda tmp: tmp.write_text(json.dumps(index, indent=1) + "\n"))
    return index


# --------------------------------------------------------------------------- where the shards are


@dataclass(frozen=True)
class ShardSpec:
    """The shards of one split and what is known about them.

    Attributes:
        urls: shard paths or URLs (``pipe:...``, ``file:...``), in their
            stored order; each epoch reads them in an order shuffled from it.
        classes: class names (from ``index.json``), or None if unknown.
        count: samples in all shards, or None if unknown.
        shard_counts, shard_bytes: per shard, from ``index.json`` (None if
            unknown): the reader checks them, so a truncated shard is named.
        source: what the spec was made from (for messages).
    """

    urls: tuple[str, ...]
    classes: tuple[str, ...] | None = None
    count: int | None = None
    shard_counts: tuple[int, ...] | None = None
    shard_bytes: tuple[int, ...] | None = None
    source: str = ""


def _read_index(directory: Path) -> dict[str, Any]:
    path = directory / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX} in {str(directory)!r}: not a `botnet data pack` output "
                                "(pass the shard files or a brace pattern instead)")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is damaged ({' '.join(str(err).split())})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a {FORMAT} index")
    if index.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has version {index.get('version')!r}; this reader knows {VERSION}")
    return index


def shard_spec(source: str | os.PathLike[str] | Sequence[str], split: str = "train") -> ShardSpec:
    """Where the shards of ``split`` are, from a pack directory, a URL pattern or a list of URLs.

    Args:
        source: a directory written by :func:`pack_folder` (or its
            ``index.json``); a string with brace patterns and ``::``-joined
            alternatives, expanded by webdataset
            (``/data/train-{000000..000127}.tar``,
            ``pipe:gsutil cat gs://b/train-{000000..000127}.tar``); or a list
            of such strings.
        split: the split to read from a pack directory.

    Raises:
        FileNotFoundError: a directory without ``index.json``, or a local
            shard that does not exist.
        ValueError: a damaged or foreign index, an unknown split, no shards.
    """
    wds = _wds()
    if not isinstance(source, (str, os.PathLike)):
        items = [str(s) for s in source]
        urls = [url for item in items for url in wds.shardlists.expand_urls(item)]
        spec = ShardSpec(tuple(urls), source=", ".join(items[:3]) + (" ..." if len(items) > 3 else ""))
    elif os.path.isdir(source) or os.path.basename(os.fspath(source)) == INDEX:
        directory = Path(source) if os.path.isdir(source) else Path(source).parent
        index = _read_index(directory)
        splits = index.get("splits", {})
        if split not in splits:
            raise ValueError(f"{str(directory / INDEX)!r} has no split {split!r} (it has {', '.join(splits)})")
        entry = splits[split]
        spec = ShardSpec(
            urls=tuple(str(directory / name) for name in entry["shards"]), classes=tuple(index["classes"]),
            count=int(entry["count"]), shard_counts=tuple(entry.get("shard_counts") or ()) or None,
            shard_bytes=tuple(entry.get("shard_bytes") or ()) or None, source=str(directory),
        )
    else:
        spec = ShardSpec(tuple(wds.shardlists.expand_urls(os.fspath(source))), source=os.fspath(source))
    if not spec.urls:
        raise ValueError(f"no shards in {spec.source!r}")
    for url in spec.urls:
        if _local_path(url) is not None and not os.path.isfile(_local_path(url)):
            raise FileNotFoundError(f"shard {url!r} not found")
    return spec


def _local_path(url: str) -> str | None:
    """The file behind a local shard URL (a plain path or ``file:``), None for pipes and remote URLs."""
    if url.startswith("file:"):
        return url[len("file:"):]
    return None if ":" in url.split("/", 1)[0] else url


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BadSample:
    """A sample whose image did not decode: what the ``bad_images`` policy is told."""

    key: str
    label: int
    shard: str
    reason: str


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err.args[0] if err.args else err).split())
    return text or type(err).__name__


class ShardDataset(IterableDataset):
    """Stream ``(image, label)`` from tar shards: disjoint shards per rank and worker, an exact epoch length.

    Yields:
        ``(transform(image), label)``; the image is a uint8 ``tv_tensors.Image``
        (C, H, W) from :func:`botnet.images.decode_image` (the same pixels
        ``read_image`` gives for the original file), so torchvision v2
        transforms apply; without a transform, the uint8 tensor (C, H, W).

    How one epoch is read (``set_epoch(e)`` as with ``DistributedSampler``):

    1. **Shard order**: pass ``p`` of epoch ``e`` reads the shard list in a
       permutation drawn from ``(seed, e, p)`` alone, the same on every rank
       and worker (webdataset's ``SimpleShardList``).
    2. **Split**: the permuted list is dealt round-robin to ranks (``rank``
       of ``world_size``) and then to the DataLoader workers of each rank
       (webdataset's ``split_by_worker``), so every reader of a pass reads
       disjoint shards and the readers together read every shard once. There
       must be at least ``world_size * num_workers`` shards (else a one-line
       ValueError), or ``resampled=True``: each reader then draws shards with
       replacement (webdataset's ``ResampledShards``, seeded from ``(seed, e,
       reader)``).
    3. **Shuffle**: a buffer of ``shuffle`` samples per reader (webdataset's
       ``shuffle``, seeded from ``(seed, e, reader, p)``) mixes samples of the
       shards it is reading, within a pass; it holds the encoded bytes (~110
       KB per ImageNet JPEG), images are decoded after it. (``pack_folder``
       writes the training images in a random order, so each shard already
       mixes classes.)
    4. **Epoch length**: every rank yields exactly ``epoch_size // world_size``
       samples (split as evenly as possible over its workers), so all ranks
       take the same number of steps. A reader that reaches the end of its
       shards goes on with pass ``p + 1`` (a new permutation, so a new share of
       the shards) until its quota is met; the rest of the pass is dropped.
       When the shards divide evenly among the readers and ``epoch_size`` is
       the split's count, an epoch is one pass: every sample exactly once.
       Otherwise it is not an exact permutation of the data: a few samples
       come twice and a few not at all (up to about one shard's worth per
       reader), as in every sharded streaming loader.

    **What is bit-exact**: for the same shards, ``seed``, ``epoch``,
    ``world_size``, number of workers, ``shuffle`` and ``epoch_size``, each
    rank yields the same samples in the same order (the DataLoader takes
    batches from its workers in a fixed round-robin), so a run resumed at
    epoch ``e + 1`` reads what an uninterrupted one would. A different number
    of workers or ranks changes which reader gets which shard, hence the
    order (not the shard permutations). Random transforms draw from torch's
    RNG in each worker, which the DataLoader seeds from its ``generator``:
    seed it per epoch for identical crops. A restart inside an epoch starts
    that epoch again. With ``persistent_workers=True`` the workers keep the
    epoch they were started with: leave it False (the default of
    :func:`shard_loader`).

    **Errors** name the shard (and the key): a missing shard, a damaged or
    truncated tar (also one cut between entries: the sample count and file
    size are checked against ``index.json`` where known), a sample without
    image or ``.cls`` entry, a label >= the number of classes of
    ``index.json``. An image that does not decode goes to ``bad_images``:
    ``"error"`` raises (naming key and label); ``"skip"`` yields another
    sample of the same shard in its place, **with that sample's own label**
    (the last good one this reader saw in that shard, else the next one), and
    records ``(key, reason)`` in :attr:`skipped` (this process) and, if
    ``skip_log`` is given, as a JSON line in that file (every worker
    appends); a callable gets a :class:`BadSample` and returns ``"skip"`` or
    ``"error"``.

    Args:
        source: a :class:`ShardSpec` or anything :func:`shard_spec` takes.
        transform: applied to each decoded image (e.g.
            :func:`botnet.classification.data.build_transforms`).
        split: split of a pack directory.
        epoch_size: images per epoch over all ranks; default: the split's
            count from ``index.json`` (needed when ``world_size > 1`` or
            ``resampled``). Without it and without an index, each reader reads
            its shards once (single process only).
        shuffle: shuffle buffer in samples per reader (0 or 1: none).
        seed: base of every random choice above.
        rank, world_size: this process's place; default: from
            ``torch.distributed`` when initialised (or the RANK / WORLD_SIZE
            environment variables, as webdataset reads them), else 0 of 1.
        resampled: draw shards with replacement (for fewer shards than
            readers, or for object stores where every reader should start at
            once).
        bad_images: ``"error"``, ``"skip"`` or a policy callable (see above).
        channels: 3 (RGB) or 1 (grey), as :func:`botnet.images.read_image`.
        classes: class names, to check labels against when the source has no
            ``index.json``.
        skip_log: file to append skipped samples to (one JSON line each).
        return_keys: yield ``(image, label, key)``: which sample each one is
            (the key of a replacement is the replacing sample's).
        batch_size: give each reader a whole number of batches of this size
            (the DataLoader's): every rank then takes exactly
            ``epoch_size // world_size // batch_size`` steps, whatever the
            number of workers, and ``len(loader)`` is that number.
        once: evaluation: every shard is read exactly once by one reader
            (no quota, no shuffle across passes, no resampling; readers
            without a shard yield nothing), so sums over all ranks count every
            sample once. ``epoch_size`` and ``batch_size`` are ignored.
    """

    def __init__(
        self,
        source: ShardSpec | str | os.PathLike[str] | Sequence[str],
        transform: Callable[[Any], Any] | None = None,
        *,
        split: str = "train",
        epoch_size: int | None = None,
        shuffle: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        resampled: bool = False,
        bad_images: str | Callable[[BadSample], str] = "error",
        channels: int = 3,
        classes: Sequence[str] | None = None,
        skip_log: str | os.PathLike[str] | None = None,
        return_keys: bool = False,
        batch_size: int | None = None,
        once: bool = False,
    ) -> None:
        super().__init__()
        wds = _wds()
        self.spec = source if isinstance(source, ShardSpec) else shard_spec(source, split)
        self.classes = tuple(classes) if classes is not None else self.spec.classes
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed's are used)")
        if rank is None:
            rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.once = bool(once)
        if self.once:
            epoch_size, batch_size, resampled = None, None, False
        self.epoch_size = epoch_size if epoch_size is not None or self.once else self.spec.count
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        if self.epoch_size is None and not self.once and (self.world_size > 1 or resampled):
            raise ValueError("epoch_size is needed with several ranks or resampled shards "
                             "(no index.json gives the number of samples)")
        if self.epoch_size is not None and self.epoch_size < self.world_size * (batch_size or 1):
            raise ValueError(f"epoch size {self.epoch_size} gives no {'batch' if batch_size else 'sample'} to some "
                             f"of the {self.world_size} rank(s)" + (f" (batch size {batch_size})" if batch_size else ""))
        if shuffle < 0:
            raise ValueError(f"shuffle buffer must be >= 0, got {shuffle}")
        if not callable(bad_images) and bad_images not in ("skip", "error"):
            raise ValueError(f"bad_images must be 'skip', 'error' or a callable, got {bad_images!r}")
        if channels not in (1, 3):
            raise ValueError(f"images are read with 1 (grey) or 3 (RGB) channels, not {channels}")
        self.transform, self.shuffle, self.seed, self.resampled = transform, int(shuffle), int(seed), resampled
        self.bad_images, self.channels, self.return_keys = bad_images, channels, return_keys
        self.skip_log = None if skip_log is None else str(skip_log)
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []
        self._expected = {url: (self.spec.shard_counts[i] if self.spec.shard_counts else None,
                                self.spec.shard_bytes[i] if self.spec.shard_bytes else None)
                          for i, url in enumerate(self.spec.urls)}

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (shard order and shuffle are functions of (seed, epoch))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (``epoch_size // world_size``)."""
        if self.epoch_size is None:
            raise TypeError("a ShardDataset without epoch_size (and without index.json), or read once, has no length")
        if self.batch_size:
            return self._steps() * self.batch_size
        return self.epoch_size // self.world_size

    def _steps(self) -> int:
        assert self.epoch_size is not None and self.batch_size
        return self.epoch_size // self.world_size // self.batch_size

    def check_workers(self, num_workers: int) -> None:
        """Raise a one-line ValueError if the readers (ranks x workers) outnumber the shards without resampling."""
        readers = self.world_size * max(1, num_workers)
        if not self.resampled and not self.once and len(self.spec.urls) < readers:
            raise ValueError(
                f"{len(self.spec.urls)} shard(s) in {self.spec.source!r} for {self.world_size} rank(s) x "
                f"{max(1, num_workers)} worker(s) = {readers} readers: each reader needs its own shard; "
                "use fewer workers, smaller shards (--shard-size) or resampled=True"
            )

    def _quota(self, worker: int, workers: int) -> int | None:
        if self.epoch_size is None:
            return None
        if self.batch_size:  # whole batches per worker: the DataLoader batches each worker's samples
            steps = self._steps()
            return (steps // workers + (1 if worker < steps % workers else 0)) * self.batch_size
        per_rank = self.epoch_size // self.world_size
        return per_rank // workers + (1 if worker < per_rank % workers else 0)

    # ----------------------------------------------------------------- the pipeline

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        wds = _wds()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.check_workers(workers)
        reader = self.rank * workers + worker
        quota = self._quota(worker, workers)
        stages: list[Any] = [lambda: self._samples(reader, endless=quota is not None), self._decode]
        if quota is not None:
            stages.append(lambda samples: itertools.islice(samples, quota))
        return iter(wds.DataPipeline(*stages))

    def _shuffled(self, samples: Iterable[dict[str, Any]], *seed: int) -> Iterable[dict[str, Any]]:
        if self.shuffle <= 1:
            return samples
        return _wds().shuffle(self.shuffle, initial=self.shuffle, seed=_wds().utils.make_seed(*seed))(samples)

    def _samples(self, reader: int, endless: bool) -> Iterator[dict[str, Any]]:
        """This reader's encoded samples (dicts of entry bytes), shuffled, pass after pass.

        Each pass is shuffled on its own (the buffer drains at its end), so
        that an epoch of exactly one pass is a permutation of this reader's
        share of the shards.
        """
        wds = _wds()
        if self.resampled:
            shards = wds.ResampledShards(list(self.spec.urls), seed=wds.utils.make_seed(self.seed, self.epoch),
                                         worker_seed=lambda: reader, deterministic=True)
            yield from self._shuffled(self._read(shards), self.seed, self.epoch, reader)
            return
        for index in itertools.count() if endless else range(1):
            order = wds.SimpleShardList(list(self.spec.urls), seed=wds.utils.make_seed(self.seed, self.epoch, index))
            # webdataset's split_by_node reads the rank from torch.distributed / the environment;
            # an explicit rank (tests, other launchers) needs the same round-robin with our numbers.
            mine = wds.split_by_worker(itertools.islice(order, self.rank, None, self.world_size))
            count = 0
            for sample in self._shuffled(self._read(mine), self.seed, self.epoch, reader, index):
                count += 1
                yield sample
            if count == 0 and endless:  # never spin forever on empty shards
                raise ValueError(f"the shards of {self.spec.source!r} hold no sample")

    def _read(self, shards: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
        """Samples (dicts of entry bytes) of each shard, by webdataset; errors rewritten to name the shard."""
        wds = _wds()
        empty = 0
        for item in shards:
            url = item["url"]
            expected_count, expected_bytes = self._expected.get(url, (None, None))
            path = _local_path(url)
            if path is not None and expected_bytes is not None and os.path.isfile(path):
                size = os.path.getsize(path)
                if size != expected_bytes:
                    raise ValueError(f"shard {url!r} is truncated or changed: {size} bytes, "
                                     f"{INDEX} says {expected_bytes}")
            count = 0
            try:
                for sample in wds.tarfile_to_samples()(iter([{"url": url}])):
                    count += 1
                    yield sample
            except FileNotFoundError:
                raise FileNotFoundError(f"shard {url!r} not found") from None
            except (OSError, EOFError, ValueError, tarfile.TarError) as err:
                raise ValueError(f"shard {url!r} is damaged or unreadable ({_one_line(err)})") from None
            if expected_count is not None and count != expected_count:
                raise ValueError(f"shard {url!r} is truncated: {count} samples, {INDEX} says {expected_count}")
            empty = empty + 1 if count == 0 else 0
            if empty >= len(self.spec.urls):  # resampled draws of nothing but empty shards
                raise ValueError(f"the shards of {self.spec.source!r} hold no sample")

    def _label(self, sample: dict[str, Any]) -> int:
        key, url = sample["__key__"], sample["__url__"]
        raw = sample.get("cls")
        if raw is None:
            raise ValueError(f"shard {url!r}: sample {key!r} has no .cls entry (truncated or not a class shard)")
        try:
            label = int(bytes(raw).decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"shard {url!r}: sample {key!r} has a .cls that is not an integer ({bytes(raw)[:20]!r})") from None
        if label < 0 or (self.classes is not None and label >= len(self.classes)):
            raise ValueError(f"shard {url!r}: sample {key!r} has label {label} but {INDEX} lists "
                             f"{len(self.classes or ())} classes; the index and the shards disagree")
        return label

    def _image_entry(self, sample: dict[str, Any]) -> tuple[bytes, str]:
        for ext in IMAGE_EXTS:
            if ext in sample:
                return sample[ext], ext
        raise ValueError(f"shard {sample['__url__']!r}: sample {sample['__key__']!r} has no image entry "
                         f"(.{', .'.join(IMAGE_EXTS[:3])}, ...)")

    def _image(self, data: bytes, name: str) -> Tensor:
        # Channels-last strides when a transform follows (same pixels, faster uint8 resampling).
        return decode_image(data, self.channels, name=name, contiguous=self.transform is None)

    def _finish(self, image: Tensor, label: int, key: str) -> tuple[Any, ...]:
        if self.transform is not None:
            from torchvision import tv_tensors

            image = self.transform(tv_tensors.Image(image))
            image = image.as_subclass(Tensor).contiguous() if isinstance(image, Tensor) else image
        return (image, label, key) if self.return_keys else (image, label)

    def _policy(self, bad: BadSample) -> str:
        choice = self.bad_images(bad) if callable(self.bad_images) else self.bad_images
        if choice not in ("skip", "error"):
            raise ValueError(f"the bad_images policy returned {choice!r}; expected 'skip' or 'error'")
        return choice

    def _record(self, bad: BadSample) -> None:
        self.skipped.append((bad.key, bad.reason))
        if self.skip_log is not None:
            append_record(self.skip_log, {"path": f"{bad.shard}:{bad.key}", "key": bad.key, "label": bad.label,
                                          "shard": bad.shard, "reason": bad.reason})

    def _decode(self, samples: Iterable[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
        """Decode, check and transform each sample; undecodable ones go to the ``bad_images`` policy."""
        last_good: OrderedDict[str, tuple[bytes, str, int, str]] = OrderedDict()  # shard -> its last good sample
        waiting: dict[str, int] = {}  # shard -> skipped samples still to be replaced by its next good one
        failures = 0  # in a row: a stream of nothing but bad images must stop, not spin
        limit = max(1000, self.spec.count or 0)
        for sample in samples:
            key, url = sample["__key__"], sample["__url__"]
            label = self._label(sample)
            data, ext = self._image_entry(sample)
            name = f"{url}:{key}.{ext}"
            try:
                image = self._image(data, name)
            except ValueError as err:
                bad = BadSample(key, label, url, str(err))
                if self._policy(bad) == "error":
                    raise ValueError(f"{err} (sample {key!r}, label {label}; bad_images='skip' replaces it "
                                     "by another sample of its shard)") from None
                self._record(bad)
                failures += 1
                if failures > limit:
                    raise ValueError(f"{failures} undecodable images in a row in {self.spec.source!r} (last: {err})")
                if url in last_good:
                    good_data, good_name, good_label, good_key = last_good[url]
                    yield self._finish(self._image(good_data, good_name), good_label, good_key)
                else:
                    waiting[url] = waiting.get(url, 0) + 1
                continue
            failures = 0
            last_good[url] = (data, name, label, key)
            last_good.move_to_end(url)
            if len(last_good) > _RECENT_SHARDS:
                last_good.popitem(last=False)
            yield self._finish(image, label, key)
            for _ in range(waiting.pop(url, 0)):
                yield self._finish(self._image(data, name), label, key)


def shard_loader(
    dataset: ShardDataset, batch_size: int, num_workers: int = 0, **kwargs: Any
) -> DataLoader:
    """A DataLoader over ``dataset``, its readers checked first (one line instead of a hung rank).

    ``kwargs`` go to ``DataLoader`` (e.g. ``pin_memory``, ``generator``,
    ``drop_last``: note that with an iterable dataset each worker batches
    its own samples, so ``drop_last`` drops up to one partial batch per
    worker, the same number on every rank). ``persistent_workers`` stays
    False so that :meth:`ShardDataset.set_epoch` reaches the workers.
    """
    if kwargs.get("persistent_workers"):
        raise ValueError("persistent_workers=True would keep the workers at their first epoch (set_epoch)")
    dataset.check_workers(num_workers)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
