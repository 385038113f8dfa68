"""timm-style ``pretrained_cfg`` of a model: input size, normalisation, head names (no weights)."""

from __future__ import annotations

from typing import Any

from ..images import IMAGENET_MEAN, IMAGENET_STD
from .spec import ModelSpec

__all__ = ["pretrained_cfg"]


def pretrained_cfg(spec: ModelSpec) -> dict[str, Any]:
    """The config timm and its data pipeline read from ``model.pretrained_cfg``.

    ``input_size`` is the spec's reference size (the size the position
    tables are made for); any other size of at least the network's stride
    works too, so ``fixed_input_size`` is False and ``min_input_size`` is the
    stride. There are no published weights: ``url`` is empty.
    """
    height, width = spec.ref_img_size
    stride = spec.total_stride
    return {
        "url": "",
        "num_classes": spec.num_classes,
        "input_size": (spec.in_chans, height, width),
        "min_input_size": (spec.in_chans, stride, stride),
        "fixed_input_size": False,
        "pool_size": (-(-height // stride), -(-width // stride)),
        # The small-stem models are for 28-64 px images, used whole.
        "crop_pct": 0.875 if spec.stem == "imagenet" else 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "description": spec.description,
        "paper_ids": "arXiv:2101.11605",
        "paper_name": "Bottleneck Transformers for Visual Recognition",
        "license": "apache-2.0",
    }
