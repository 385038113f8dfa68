"""Classify image files with a saved model: preprocessing from its description, top-k output.

Inputs (files, folders, globs) are expanded by
:func:`botnet.image_files.image_inputs`, the function ``botnet detect
predict`` uses. Each image is read by :func:`botnet.images.read_image` with the model's
``in_chans`` (the package's one reader: orientation, 16-bit, alpha and every
Pillow mode handled as in training) and turned into a model input by the
checkpoint's :class:`~botnet.preprocess.Preprocessing` (resized whole to its
``img_size`` and normalised with its ``mean`` / ``std``; the same function
``botnet attention`` uses).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..images import read_image
from ..models.network import BoTNet
from ..preprocess import Preprocessing, preprocessing_from_meta

__all__ = ["predict_topk", "classify_files"]


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
    """Top-k classes of each image; a file that cannot be read gets its reason instead.

    One unreadable file (missing, not an image, truncated) does not cost the
    others their results: each record says what happened to its file.

    Args:
        progress: optional wrapper over the batch start indices (e.g. a rich ``track``).

    Returns:
        One dict per image, in order: ``image`` (the path), ``top``, a list
        of ``{"rank", "index", "label", "probability"}`` (softmax over all
        classes; empty for an unreadable file) and ``error`` (None, or why the
        file could not be read).
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
        records: list[dict[str, Any]] = [{"image": path, "top": [], "error": None} for path in chunk]
        inputs, readable = [], []
        for record in records:
            try:
                inputs.append(transform(read_image(record["image"], prep.in_chans)))
                readable.append(record)
            except (ValueError, FileNotFoundError) as err:
                record["error"] = str(err)
        if inputs:
            probabilities = model(torch.stack(inputs).to(device)).float().softmax(dim=-1)
            values, indices = probabilities.topk(topk, dim=-1)
            for record, row_values, row_indices in zip(readable, values.tolist(), indices.tolist()):
                record["top"] = [
                    {"rank": rank + 1, "index": index, "label": prep.class_names[index], "probability": value}
                    for rank, (value, index) in enumerate(zip(row_values, row_indices))
                ]
        results += records
    return results


def classify_files(
    checkpoint: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    topk: int = 5,
    batch_size: int = 32,
    device: str = "cpu",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Top-k classes of image files with a saved classifier; what ``botnet predict`` prints.

    ``inputs`` are files, folders (recursive, images only, sorted) and glob
    patterns, expanded by :func:`botnet.image_files.image_inputs` (the
    expansion ``botnet detect predict`` uses too). An input that names no
    file and a file that cannot be read are records with an ``error``.

    Returns:
        ``{"checkpoint", "model", "num_classes", "img_size", "defaults_used", "predictions"}``,
        ``predictions`` one record per file (and per input that named none)
        as :func:`predict_topk` gives them.

    Raises:
        botnet.image_files.NothingToRead: no input names any file (before the checkpoint is loaded).
    """
    from ..checkpoint import load_model
    from ..image_files import image_inputs
    from ..runtime.device import resolve_device

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    entries = image_inputs(inputs)
    target = resolve_device(device)
    model, meta = load_model(checkpoint, map_location=target)
    prep = preprocessing_from_meta(model, meta)
    files = [path for path, problem in entries if problem is None]
    results = iter(predict_topk(model, prep, files, topk=topk, batch_size=batch_size, device=target,
                                progress=progress))
    predictions = [next(results) if problem is None else {"image": path, "top": [], "error": problem}
                   for path, problem in entries]
    return {"checkpoint": os.fspath(checkpoint), "model": model.name, "num_classes": model.num_classes,
            "img_size": list(prep.img_size), "defaults_used": list(prep.defaults_used), "predictions": predictions}
