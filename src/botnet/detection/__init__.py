"""BoTNet backbones for torchvision's Mask R-CNN and Faster R-CNN, any image size."""

from .backbone import NORM_LAYERS, BoTNetFPN, botnet_fpn_backbone, freeze_batchnorm
from .models import (
    anchor_generator_for,
    build_detector,
    fasterrcnn_botnet50_fpn,
    fasterrcnn_botnet_fpn,
    maskrcnn_botnet50_fpn,
    maskrcnn_botnet_fpn,
)

__all__ = [
    "NORM_LAYERS",
    "BoTNetFPN",
    "anchor_generator_for",
    "botnet_fpn_backbone",
    "build_detector",
    "fasterrcnn_botnet50_fpn",
    "fasterrcnn_botnet_fpn",
    "freeze_batchnorm",
    "maskrcnn_botnet50_fpn",
    "maskrcnn_botnet_fpn",
]
