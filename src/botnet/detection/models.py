"""Mask R-CNN and Faster R-CNN with BoTNet FPN backbones (torchvision's detectors), and their description.

:func:`build_detector` builds one from keywords; a :class:`DetectorConfig`
(JSON-able) describes one, and :func:`build_from_config` builds it again,
which is what saved detectors carry (:mod:`botnet.detection.checkpoint`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from .backbone import BoTNetFPN, botnet_fpn_backbone

__all__ = [
    "ARCHITECTURES",
    "DetectorConfig",
    "build_from_config",
    "anchor_generator_for",
    "build_detector",
    "fasterrcnn_botnet50_fpn",
    "fasterrcnn_botnet_fpn",
    "maskrcnn_botnet50_fpn",
    "maskrcnn_botnet_fpn",
]

ARCHITECTURES = {"maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN}

# torchvision's anchors are 8x the level's stride (32 px at stride 4 ... 512 at 64).
ANCHOR_SCALE = 8


def anchor_generator_for(
    strides: Sequence[int], anchor_scale: float = ANCHOR_SCALE, aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
) -> AnchorGenerator:
    """One anchor size per level, ``anchor_scale * stride``, with 3 aspect ratios.

    For botnet50 (strides 4..64) this is torchvision's default generator
    exactly; small-stem models (botnet_tiny: strides 2..16 with layers 2-4)
    get anchors that fit their finer levels.
    """
    sizes = tuple((int(round(anchor_scale * s)),) for s in strides)
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(strides))


def roi_pool_for(body: BoTNetFPN, output_size: int) -> MultiScaleRoIAlign:
    """torchvision's ``MultiScaleRoIAlign`` over the backbone's levels, with their scales set from its strides.

    torchvision infers each level's scale from the first batch it sees
    (feature size / largest image, rounded to a power of 2) and keeps it for
    the rest of the process. With images just above a multiple of the FPN's
    padding that guess is off by a factor of 2 (e.g. a 66 px image padded to
    96 gives a stride-2 map of 48: 48/66 rounds to scale 1, not 1/2), and
    the cache makes results depend on which batch came first, so a resumed
    run would differ from an uninterrupted one. The strides are known
    exactly; they are set here once.
    """
    pool = MultiScaleRoIAlign(body.featmap_names, output_size=output_size, sampling_ratio=2)
    strides = body.strides[: len(body.featmap_names)]
    pool.scales = [1.0 / s for s in strides]
    pool.map_levels = initLevelMapper(
        int(math.log2(strides[0])), int(math.log2(strides[-1])),
        canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level,
    )
    return pool


def build_detector(
    arch: str,
    num_classes: int,
    backbone: str | BoTNetFPN = "botnet50",
    *,
    weights_backbone: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
    trainable_backbone_layers: int | None = None,
    norm_layer: Any = None,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    box_head_size: int = 1024,
    mask_head_channels: int = 256,
    anchor_scale: float = ANCHOR_SCALE,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> MaskRCNN | FasterRCNN:
    """torchvision's ``MaskRCNN`` or ``FasterRCNN`` around a :func:`botnet_fpn_backbone`.

    Args:
        arch: "maskrcnn" or "fasterrcnn".
        num_classes: classes including background (COCO: 91).
        backbone: a registered model name, or a ready :class:`BoTNetFPN`
            (then the backbone options below must be left out).
        weights_backbone: ResNet-50 state dict (or file) for the conv stages.
        trainable_backbone_layers, norm_layer, returned_layers: see
            :func:`botnet_fpn_backbone`.
        fpn_channels: FPN width (and so of the RoI heads' input).
        box_head_size, mask_head_channels: widths of the box head's two
            fully connected layers and of the mask head's four convolutions
            (torchvision's 1024 and 256; smaller ones make CPU runs feasible,
            the mask head dominates the cost of a training step).
        anchor_scale: anchor size per level = ``anchor_scale * stride``.
        backbone_kwargs: :func:`botnet.create_model` overrides (e.g.
            ``{"ref_img_size": 1024}``).
        **kwargs: any keyword of torchvision's MaskRCNN / FasterRCNN
            (``min_size``, ``max_size``, ``box_detections_per_img``, heads, ...).

    Inputs and outputs are torchvision's: a list of (3, H, W) float images in
    [0, 1], any sizes; in training also targets with ``boxes`` (N, 4) xyxy,
    ``labels`` (N,) and, for Mask R-CNN, ``masks`` (N, H, W).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be at least 2, got {num_classes}")
    if isinstance(backbone, BoTNetFPN):
        given = {"weights_backbone": weights_backbone, "trainable_backbone_layers": trainable_backbone_layers,
                 "norm_layer": norm_layer, "backbone_kwargs": backbone_kwargs}
        if any(v is not None for v in given.values()):
            names = sorted(k for k, v in given.items() if v is not None)
            raise ValueError(f"backbone options {names} given with a ready-made backbone")
        body = backbone
    else:
        body = botnet_fpn_backbone(
            backbone, weights=weights_backbone, trainable_layers=trainable_backbone_layers, norm_layer=norm_layer,
            returned_layers=returned_layers, out_channels=fpn_channels, **(backbone_kwargs or {}),
        )
    kwargs.setdefault("rpn_anchor_generator", anchor_generator_for(body.strides, anchor_scale))
    # torchvision's default RoI poolers read levels "0".."3"; read whatever levels the backbone has.
    kwargs.setdefault("box_roi_pool", roi_pool_for(body, 7))
    if "box_head" not in kwargs and "box_predictor" not in kwargs:
        kwargs["box_head"] = TwoMLPHead(body.out_channels * 7 * 7, box_head_size)
        kwargs["box_predictor"] = FastRCNNPredictor(box_head_size, num_classes)
    if arch == "maskrcnn":
        kwargs.setdefault("mask_roi_pool", roi_pool_for(body, 14))
        if "mask_head" not in kwargs and "mask_predictor" not in kwargs:
            kwargs["mask_head"] = MaskRCNNHeads(body.out_channels, [mask_head_channels] * 4, dilation=1)
            kwargs["mask_predictor"] = MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes)
    # torchvision takes num_classes only when it builds the predictors itself.
    has_predictor = "box_predictor" in kwargs or "mask_predictor" in kwargs
    return ARCHITECTURES[arch](body, num_classes=None if has_predictor else num_classes, **kwargs)


def maskrcnn_botnet_fpn(backbone: str | BoTNetFPN = "botnet50", num_classes: int = 91, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN with any registered BoTNet / ResNet + FPN (see :func:`build_detector`)."""
    return build_detector("maskrcnn", num_classes, backbone, **kwargs)


def fasterrcnn_botnet_fpn(backbone: str | BoTNetFPN = "botnet50", num_classes: int = 91, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN with any registered BoTNet / ResNet + FPN (see :func:`build_detector`)."""
    return build_detector("fasterrcnn", num_classes, backbone, **kwargs)


def maskrcnn_botnet50_fpn(num_classes: int = 91, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN with a BoT50 FPN backbone, the paper's detection setup.

    Example:
        >>> model = maskrcnn_botnet50_fpn(num_classes=91, min_size=1024, max_size=1024,
        ...                               backbone_kwargs={"ref_img_size": 1024})
    """
    return build_detector("maskrcnn", num_classes, "botnet50", **kwargs)


def fasterrcnn_botnet50_fpn(num_classes: int = 91, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN with a BoT50 FPN backbone."""
    return build_detector("fasterrcnn", num_classes, "botnet50", **kwargs)


@dataclass
class DetectorConfig:
    """Everything that builds a detector (see :func:`build_detector`).

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
        """The config of saved JSON; an unknown key raises (as :meth:`botnet.ModelSpec.from_dict` does)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown detector config key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def build_from_config(config: DetectorConfig, weights_backbone: Any = None, backbone_meta: dict | None = None) -> MaskRCNN | FasterRCNN:
    """The detector of ``config``; ``backbone_meta`` (from a checkpoint) pins the exact backbone spec."""
    from ..checkpoint import model_from_meta

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
