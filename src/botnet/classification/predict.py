"""Classify image files with a saved model: preprocessing from its description, top-k output.

Each image is read by :func:`botnet.images.read_image` with the model's
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
    """Top-k classes of each image.

    Args:
        progress: optional wrapper over the batch start indices (e.g. a rich ``track``).

    Returns:
        One dict per image, in order: ``image`` (the path) and ``top``, a list
        of ``{"rank", "index", "label", "probability"}`` (softmax over all classes).
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
        batch = torch.stack([transform(read_image(path, prep.in_chans)) for path in chunk]).to(device)
        probabilities = model(batch).float().softmax(dim=-1)
        values, indices = probabilities.topk(topk, dim=-1)
        for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            top = [
                {"rank": rank + 1, "index": index, "label": prep.class_names[index], "probability": value}
                for rank, (value, index) in enumerate(zip(row_values, row_indices))
            ]
            results.append({"image": path, "top": top})
    return results


def classify_files(
    checkpoint: str | os.PathLike[str],
    paths: Sequence[str],
    topk: int = 5,
    batch_size: int = 32,
    device: str = "cpu",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Top-k classes of image files with a saved classifier; what ``botnet predict`` prints.

    Returns:
        ``{"checkpoint", "model", "num_classes", "img_size", "defaults_used", "predictions"}``,
        ``predictions`` as :func:`predict_topk` gives them.
    """
    from ..checkpoint import load_model
    from ..runtime.device import resolve_device

    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"no image file at {', '.join(repr(p) for p in missing)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    target = resolve_device(device)
    model, meta = load_model(checkpoint, map_location=target)
    prep = preprocessing_from_meta(model, meta)
    results = predict_topk(model, prep, list(paths), topk=topk, batch_size=batch_size, device=target,
                           progress=progress)
    return {"checkpoint": os.fspath(checkpoint), "model": model.name, "num_classes": model.num_classes,
            "img_size": list(prep.img_size), "defaults_used": list(prep.defaults_used), "predictions": results}
