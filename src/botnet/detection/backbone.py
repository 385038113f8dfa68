"""A BoTNet as a torchvision detection backbone: c2..c5 stages plus an FPN.

torchvision's detectors only need a module with ``out_channels`` that maps
images to an ordered dict of same-width feature maps. :class:`BoTNetFPN` is
torchvision's own :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`
around any registered BoTNet / ResNet, with the output stride of each level
recorded so anchors and RoI pooling can be fitted to small-stem models too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ..checkpoint import model_meta
from ..layers.blocks import BoTBlock
from ..models import BoTNet, create_model
from ..models.freeze import freeze_stages, frozen_prefixes
from ..models.transfer import WeightsSource, load_backbone_weights, read_weights_source
from ..models.weights import LoadReport, load_resnet_weights

__all__ = ["BoTNetFPN", "botnet_fpn_backbone", "freeze_batchnorm", "NORM_LAYERS"]

NORM_LAYERS: dict[str, type[nn.Module]] = {
    "frozen": FrozenBatchNorm2d,
    "bn": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
}



def freeze_batchnorm(module: nn.Module, keep: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a ``FrozenBatchNorm2d`` with the same statistics.

    Frozen BN is an affine per-channel map fixed at the current running mean
    and variance: the usual choice for detection, whose per-GPU batches (2
    images) are too small for batch statistics. Submodules that are
    instances of ``keep`` are left as they are. Returns ``module`` (changed
    in place; a bare ``BatchNorm2d`` argument is returned converted).
    """
    if keep and isinstance(module, keep):
        return module
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        converted = freeze_batchnorm(child, keep)
        if converted is not child:
            setattr(module, name, converted)
    return module


class BoTNetFPN(BackboneWithFPN):
    """Stages of a :class:`~botnet.BoTNet` feeding torchvision's FPN.

    Attributes:
        out_channels: channels of every output level (torchvision's contract).
        featmap_names: names of the stage levels ("0", "1", ...), without the
            extra "pool" level; what RoI pooling reads.
        strides: output stride of every level, extra levels included, e.g.
            (4, 8, 16, 32, 64) for botnet50 with all four stages.
        body_meta: JSON description of the BoTNet (rebuilds it; see
            :func:`botnet.checkpoint.model_meta`).
        load_report: what :func:`botnet.load_resnet_weights` did, or None.

    Shape:
        (B, 3, H, W) -> {"0": (B, out_channels, H/s0, W/s0), ..., "pool": ...};
        any H, W (the detector's transform pads them to a multiple of 32).
    """

    def __init__(
        self,
        model: BoTNet,
        returned_layers: Sequence[int] = (1, 2, 3, 4),
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        fpn_norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        returned_layers = sorted(set(returned_layers))
        if not returned_layers or returned_layers[0] < 1 or returned_layers[-1] > 4:
            raise ValueError(f"returned_layers must be a non-empty subset of (1, 2, 3, 4), got {returned_layers}")
        info = [model.feature_info[i - 1] for i in returned_layers]
        return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
        extra_blocks = LastLevelMaxPool() if extra_blocks is None else extra_blocks
        super().__init__(
            model, return_layers, [f["num_chs"] for f in info], out_channels,
            extra_blocks=extra_blocks, norm_layer=fpn_norm_layer,
        )
        self.body_meta = model_meta(model)
        self.load_report: LoadReport | None = None  # set when started from weights
        self.featmap_names = [str(v) for v in range(len(returned_layers))]
        strides = [int(f["reduction"]) for f in info]
        # LastLevelMaxPool (torchvision's default extra level) halves the last map once;
        # other extra blocks must say their strides through `extra_strides`.
        extra_strides = getattr(extra_blocks, "extra_strides", None)
        if extra_strides is None and isinstance(extra_blocks, LastLevelMaxPool):
            extra_strides = [strides[-1] * 2]
        if extra_strides is None:
            raise ValueError(
                f"cannot tell the output strides of extra block {type(extra_blocks).__name__}; "
                "give it an `extra_strides` attribute (list of ints)"
            )
        self.strides = tuple(strides + list(extra_strides))

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's parameter groups of the body (:meth:`botnet.BoTNet.group_matcher` under ``body.``).

        torchvision's ``IntermediateLayerGetter`` keeps the BoTNet's module
        names but not its class, so the matcher is given here; the FPN
        matches neither group and ranks with the heads (per-stage learning
        rates, ``--layer-decay``).
        """
        return {"stem": r"^body\.conv1|^body\.bn1",
                "blocks": r"^body\.layer(\d+)" if coarse else r"^body\.layer(\d+)\.(\d+)"}


def _resolve_norm(norm_layer: Callable[..., nn.Module] | str | None, pretrained: bool) -> type[nn.Module]:
    if norm_layer is None:
        return FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if isinstance(norm_layer, str):
        if norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer must be one of {sorted(NORM_LAYERS)} or a class, got {norm_layer!r}")
        return NORM_LAYERS[norm_layer]
    if norm_layer not in NORM_LAYERS.values():
        raise ValueError(
            f"norm_layer must be FrozenBatchNorm2d, BatchNorm2d or SyncBatchNorm, got {norm_layer!r}"
        )
    return norm_layer  # type: ignore[return-value]


def botnet_fpn_backbone(
    name: str | BoTNet = "botnet50",
    *,
    weights: str | os.PathLike[str] | Mapping[str, Tensor] | WeightsSource | None = None,
    trainable_layers: int | None = None,
    norm_layer: Callable[..., nn.Module] | str | None = None,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    **model_kwargs: Any,
) -> BoTNetFPN:
    """A BoTNet (or ResNet) with an FPN, ready for torchvision's MaskRCNN / FasterRCNN.

    Mirrors torchvision's ``resnet_fpn_backbone``. With ``weights`` (a
    ResNet-50 state dict, or a path to one) the convolutional stages start
    from it (:func:`botnet.load_resnet_weights`; BoT blocks keep their
    initialisation); with a botnet classification checkpoint or run
    directory, the whole backbone does (the paper's pretrain-then-detect
    chain). As in torchvision, BN is then frozen and only the last 3
    stages train by default. Without weights everything trains, with
    ordinary BatchNorm (from scratch, as in the paper's longer schedules).

    Args:
        name: any registered model (:func:`botnet.list_models`), or a built
            :class:`~botnet.BoTNet` (then no ``model_kwargs``).
        weights: a ResNet-50 state dict or file (.pth / .pt / .safetensors):
            the convolutional parts; or a botnet classification checkpoint
            file or run directory (or its :class:`~botnet.models.transfer.WeightsSource`):
            every backbone tensor, BoT blocks and position tables included,
            tables interpolated to this model's reference size where it
            differs (:func:`~botnet.models.transfer.load_backbone_weights`).
        trainable_layers: 0-5 stages trained, counted from layer4 back to the
            stem (torchvision's rule). Default: 3 with weights, else 5.
        norm_layer: ``FrozenBatchNorm2d``, ``nn.BatchNorm2d``,
            ``nn.SyncBatchNorm`` or "frozen" / "bn" / "syncbn". Default:
            frozen with weights, else BatchNorm2d. Frozen freezes the
            convolutional parts (what holds a ResNet's statistics); the BoT
            blocks, which start from their initialisation, keep trainable
            BatchNorm.
        returned_layers: stages (1 = c2/layer1 ... 4 = c5/layer4) fed to the FPN.
        out_channels: FPN width (256 in the paper and torchvision).
        extra_blocks: extra FPN levels (default: max-pool of the last, "pool").
        **model_kwargs: :func:`botnet.create_model` overrides, e.g.
            ``ref_img_size=1024`` to size the position tables for 1024 px
            images (other sizes interpolate them).

    Returns:
        :class:`BoTNetFPN`; ``strides`` gives each level's output stride.
    """
    pretrained = weights is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    frozen_prefixes(trainable_layers)  # checks the range
    if not pretrained and trainable_layers < 5:
        warnings.warn(
            f"trainable_layers={trainable_layers} without backbone weights freezes randomly initialised "
            "stages; pass weights= (a ResNet-50 state dict) or use trainable_layers=5",
            stacklevel=2,
        )
    norm = _resolve_norm(norm_layer, pretrained)

    if isinstance(name, BoTNet):
        if model_kwargs:
            raise ValueError(f"model options {sorted(model_kwargs)} given with a built model")
        model = name
    else:
        model = create_model(name, num_classes=0, **model_kwargs)
    report: LoadReport | None = None
    if isinstance(weights, (str, os.PathLike)):
        weights = read_weights_source(weights)
    if isinstance(weights, WeightsSource):
        report = load_backbone_weights(model, weights)  # raises when no tensor fits
    elif weights is not None:
        report = load_resnet_weights(model, weights)
    if norm is FrozenBatchNorm2d:
        # BoT blocks get nothing from a ResNet: freezing their BN would fix it at its
        # initialisation, and the zero-initialised last BN would cut the attention branch off
        # for good. They keep trainable BatchNorm; the convolutional parts are frozen. (The rule
        # does not depend on `weights`, so a saved detector is rebuilt the same way.)
        freeze_batchnorm(model, keep=(BoTBlock,))
    elif norm is nn.SyncBatchNorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    freeze_stages(model, trainable_layers)

    backbone = BoTNetFPN(model, returned_layers, out_channels, extra_blocks)
    backbone.load_report = report
    return backbone
