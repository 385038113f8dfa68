"""Detector configurations, and saving / loading detectors like classifiers.

A detector is described by a :class:`DetectorConfig` (JSON-able) plus the
exact backbone spec; the description ("meta") travels with the weights, as
for classifiers (:mod:`botnet.checkpoint`), with ``"format":
"botnet-detection"``:

* ``*.safetensors``: weights, description in the metadata under ``"botnet"``;
* ``*.pt``: a training checkpoint dict with at least ``"model"`` and ``"meta"``.

A training run writes ``best.pt``, ``last.pt``, ``best.safetensors`` and
``last.safetensors`` in its folder; :func:`load_detector` takes any of them
or the folder.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    CheckpointError,
    PathLike,
    atomic_write,
    model_from_meta,
    read_weights_and_meta,
    resolve_checkpoint_path,
    write_safetensors,
)
from .backbone import botnet_fpn_backbone
from .models import ANCHOR_SCALE, build_detector

__all__ = ["DetectorConfig", "build_from_config", "detector_meta", "load_detector", "save_detector", "unwrap"]

META_FORMAT = "botnet-detection"


@dataclass
class DetectorConfig:
    """Everything that builds a detector (see :func:`botnet.detection.build_detector`).

    ``detector_kwargs`` are torchvision MaskRCNN / FasterRCNN keywords
    (``min_size``, ``max_size``, ``box_batch_size_per_image``, ...);
    ``backbone_kwargs`` are :func:`botnet.create_model` overrides.
    """

    arch: str = "maskrcnn"
    backbone: str = "botnet50"
    num_classes: int = 91
    norm: str = "bn"
    trainable_layers: int = 5
    returned_layers: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    fpn_channels: int = 256
    box_head_size: int = 1024
    mask_head_channels: int = 256
    anchor_scale: float = ANCHOR_SCALE
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    detector_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown detector config key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def build_from_config(config: DetectorConfig, weights_backbone: Any = None, backbone_meta: dict | None = None) -> nn.Module:
    """The detector of ``config``; ``backbone_meta`` (from a checkpoint) pins the exact backbone spec."""
    if backbone_meta is not None:
        model: Any = model_from_meta(backbone_meta)
        model_kwargs: dict[str, Any] = {}
    else:
        model, model_kwargs = config.backbone, dict(config.backbone_kwargs)
    with warnings.catch_warnings():
        if backbone_meta is not None:  # weights come from the checkpoint, not from a ResNet
            warnings.filterwarnings("ignore", message="trainable_layers=")
        body = botnet_fpn_backbone(
            model, weights=weights_backbone, trainable_layers=config.trainable_layers, norm_layer=config.norm,
            returned_layers=config.returned_layers, out_channels=config.fpn_channels, **model_kwargs,
        )
    return build_detector(
        config.arch, config.num_classes, body, box_head_size=config.box_head_size,
        mask_head_channels=config.mask_head_channels, anchor_scale=config.anchor_scale, **config.detector_kwargs,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model)."""
    return getattr(model, "module", model)


def detector_meta(model: nn.Module, config: DetectorConfig, **extra: Any) -> dict[str, Any]:
    """The JSON-able description saved with a detector (plus ``extra``: class_names, category_ids, ...)."""
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "config": dataclasses.asdict(config),
        "backbone_meta": unwrap(model).backbone.body_meta,
    }
    meta.update(extra)
    # Fails now, not at load time, if something is not JSON-able; and tuples become
    # lists, so this equals the meta read back from a checkpoint.
    return json.loads(json.dumps(meta))


def save_detector(path: PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Atomically write the weights as safetensors with ``meta`` in the metadata."""
    atomic_write(path, lambda tmp: write_safetensors(tmp, unwrap(model).state_dict(), meta))


def load_detector(path: PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a detector from ``.safetensors``, a ``.pt`` checkpoint or a run folder.

    Returns:
        (model in eval mode, meta dict).
    """
    path = resolve_checkpoint_path(path)
    state, meta = read_weights_and_meta(path)
    if meta.get("format") != META_FORMAT:
        raise ValueError(
            f"{str(path)!r} holds a {meta.get('format', 'unknown')!r} model, not a detector "
            "(train one with `botnet detect train`)"
        )
    try:
        config = DetectorConfig.from_dict(meta["config"])
        backbone_meta = meta["backbone_meta"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} has an incomplete detector description ({err})") from None
    if config.norm == "syncbn":  # same tensors; SyncBatchNorm needs a process group
        config.norm = "bn"
    model = build_from_config(config, backbone_meta=backbone_meta)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Detectors saved before the BoT blocks kept trainable BN under "frozen" lack only their
        # BN step counters (unused in eval); anything else missing is an error.
        if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
            model.load_state_dict(state)  # raises with torch's list of keys
    except RuntimeError as err:
        raise CheckpointError(f"{str(path)!r}: the weights do not fit the detector it describes "
                              f"({str(err).splitlines()[0]})") from None
    return model.to(map_location).eval(), meta
