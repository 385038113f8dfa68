"""Which files are images to read: one rule for dataset folders, prediction inputs and hidden entries.

Hidden entries (names starting with ``.``) are never classes or samples, at
any depth: file managers, photo tools and version control put thumbnails,
caches and metadata there (``.thumbnails/``, ``.DS_Store``, ``._IMG_1.jpg``
from macOS, ``.ipynb_checkpoints/``), and an image in such a folder is a
copy or an artefact, never a new class. ``--dataset folder`` (through
:func:`visible_dirs` and :func:`walk_images`), ``botnet data pack`` (the
same functions, so a packed set holds exactly the samples the folder
trains on), ``botnet predict`` and ``botnet detect predict`` (through
:func:`image_inputs`) all follow it.

Prediction inputs are files (taken as given, whatever their name), folders
(every image file below them, recursively, in sorted order) and glob
patterns (``'photos/*.jpg'``, ``'photos/**/*.png'``; quoted, so the
shell leaves them to us), in any mix. An input that yields nothing is kept
with the reason, so the caller can list it beside the results.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .images import IMAGE_SUFFIXES

__all__ = ["VAL_DIRS", "NothingToRead", "image_folder", "image_inputs", "is_hidden", "train_val_folders", "visible_dirs",
           "walk_images"]

Input = tuple[str, str | None]  # (a file to read, None) or (an input that names none, why)
Samples = list[tuple[str, int]]  # (path, label), ImageFolder's order
# Where the validation split of ROOT/train/<class>/* is looked for, in this order.
VAL_DIRS = ("val", "validation", "test")


class NothingToRead(FileNotFoundError):
    """None of the inputs names an image file (a FileNotFoundError, so commands print it as one line)."""


def is_hidden(name: str) -> bool:
    """A hidden entry: its name starts with ``.`` (``.thumbnails``, ``.DS_Store``, ``._photo.jpg``)."""
    return name.startswith(".")


def visible_dirs(path: str | os.PathLike[str]) -> list[str]:
    """Names of the sub-directories of ``path`` that are not hidden, sorted: the classes of an image folder."""
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not is_hidden(entry.name))


def walk_images(root: str | os.PathLike[str], suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files under ``root`` whose names end with one of ``suffixes`` (any case), hidden entries skipped.

    The order is torchvision ImageFolder's (a sorted walk: directories by
    path, the files of each sorted), so a folder's samples keep the order
    they always had. Symbolic links to folders are followed, as ImageFolder
    does.
    """
    root = Path(root)
    ends = tuple(s.lower() for s in suffixes)
    files: list[Path] = []
    for current, dirs, names in sorted(os.walk(root, followlinks=True)):
        # sorted() has consumed the walk already, so pruning ``dirs`` is too late: test each level.
        if any(is_hidden(part) for part in Path(current).relative_to(root).parts):
            continue
        files += [Path(current) / name for name in sorted(names)
                  if not is_hidden(name) and name.lower().endswith(ends)]
    return files


def image_folder(root: str | os.PathLike[str]) -> tuple[list[str], Samples]:
    """Classes and (path, label) samples of an ImageFolder tree ``root/<class>/...``, hidden entries left out.

    torchvision's ImageFolder lists the same samples in the same order
    (its extensions, a sorted walk), except that it takes ``.thumbnails/`` for
    a class and ``.cache/x.jpg`` or ``._x.jpg`` for samples. ``--dataset
    folder`` and ``botnet data pack`` both list through here, so a packed set
    holds exactly the samples the folder trains on.

    Raises:
        FileNotFoundError: no class sub-directory, or a class without an image file.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root)
    classes = visible_dirs(root)
    if not classes:
        raise FileNotFoundError(f"image folder {str(root)!r} has no class sub-directory (hidden ones do not count; "
                                "expected one sub-directory per class holding images)")
    samples: Samples = []
    for label, name in enumerate(classes):
        files = walk_images(root / name, IMG_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"image folder {str(root)!r}: class directory {name!r} holds no image file "
                                    f"({', '.join(IMG_EXTENSIONS)}; hidden entries do not count)")
        samples += [(str(path), label) for path in files]
    return classes, samples


def train_val_folders(root: str | os.PathLike[str]) -> tuple[list[str], Samples, Path | None, Samples | None]:
    """``root/train`` and its validation twin (the first of :data:`VAL_DIRS` present), listed by
    :func:`image_folder`: (classes, train samples, val directory or None, val samples or None).

    Raises:
        ValueError: the two splits have different class directories (labels would not match).
    """
    root = Path(root)
    classes, train = image_folder(root / "train")
    val_dir = next((root / name for name in VAL_DIRS if (root / name).is_dir()), None)
    if val_dir is None:
        return classes, train, None, None
    val_classes, val = image_folder(val_dir)
    if val_classes != classes:
        only_train = sorted(set(classes) - set(val_classes))[:3]
        only_val = sorted(set(val_classes) - set(classes))[:3]
        raise ValueError(f"class directories differ between {str(root / 'train')!r} and {str(val_dir)!r} "
                         f"(only in train: {only_train}, only in {val_dir.name}: {only_val}); labels would not match")
    return classes, train, val_dir, val


def _expand(item: str) -> tuple[list[str], str | None]:
    """The image files one input names, or ([], why it names none)."""
    if os.path.isfile(item):
        return [item], None
    if os.path.isdir(item):
        files = [str(path) for path in walk_images(item)]
        return files, None if files else f"no image file in folder {item!r} ({', '.join(IMAGE_SUFFIXES)})"
    if glob.has_magic(item):
        files = []
        for match in sorted(glob.glob(item, recursive=True)):  # glob skips hidden names unless spelled out
            if os.path.isdir(match):
                files += [str(path) for path in walk_images(match)]
            elif match.lower().endswith(IMAGE_SUFFIXES):
                files.append(match)
        return files, None if files else f"no image file matches {item!r}"
    return [], f"no image or folder at {item!r}"


def image_inputs(items: Sequence[str | os.PathLike[str]]) -> list[Input]:
    """Every image file that ``items`` (files, folders, globs) name, in order; inputs that name none kept.

    Returns:
        ``(path, None)`` for each file to read (each file once, at its first
        mention), and ``(input, reason)`` for each input that names no image
        file (a missing path, an empty folder, a pattern that matches none),
        where it was given, so the caller can list it with the results.

    Raises:
        NothingToRead: no input names any file; one line with every reason.
    """
    entries: list[Input] = []
    seen: set[str] = set()
    for item in map(os.fspath, items):
        files, problem = _expand(str(item))
        if problem is not None:
            entries.append((str(item), problem))
        for path in files:
            key = os.path.normpath(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                entries.append((path, None))
    if all(problem is not None for _, problem in entries):
        raise NothingToRead("; ".join(problem for _, problem in entries if problem) or "no input given")
    return entries
