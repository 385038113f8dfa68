"""The one network class behind every model, and its builder."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.attention import check_feature_map
from ..layers.blocks import ACT_LAYERS, make_blocks
from .spec import ModelSpec

__all__ = ["BoTNet", "build_model", "STAGE_NAMES"]

STAGE_NAMES = ("c2", "c3", "c4", "c5")


def _ceil_div(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-size[0] // stride), -(-size[1] // stride))


class BoTNet(nn.Module):
    """A ResNet whose stages may hold BoT blocks; ``resnet50`` is torchvision's exactly.

    Submodules carry torchvision's names (``conv1``, ``bn1``, ``maxpool``,
    ``layer1``..``layer4``, ``fc``), so torchvision / timm ResNet state dicts
    load by name and torchvision's detection utilities find the stages.

    Shape: (B, in_chans, H, W) -> (B, num_classes). Any H, W of at least
    ``min_input_size`` (the network's total stride).
    """

    def __init__(self, spec: ModelSpec, name: str = "botnet") -> None:
        super().__init__()
        if spec.act not in ACT_LAYERS:
            raise ValueError(f"act must be one of {sorted(ACT_LAYERS)}, got {spec.act!r}")
        if spec.stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {spec.stem!r}")
        self.spec = spec
        self.name = name
        self.in_chans = spec.in_chans
        self.num_classes = spec.num_classes
        act_layer = ACT_LAYERS[spec.act]

        # Children are registered in forward order: torchvision's
        # IntermediateLayerGetter and timm's feature wrappers run them so.
        imagenet_stem = spec.stem == "imagenet"
        self.conv1 = nn.Conv2d(
            spec.in_chans, spec.stem_width, kernel_size=7 if imagenet_stem else 3,
            stride=2 if imagenet_stem else 1, padding=3 if imagenet_stem else 1, bias=False,
        )
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        self.act = act_layer(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        reduction = 4 if imagenet_stem else 1

        ref = spec.ref_img_size
        ref_size = _ceil_div((ref, ref) if isinstance(ref, int) else tuple(ref), reduction)
        inplanes = spec.stem_width
        self.feature_info: list[dict[str, Any]] = []
        for index, stage in enumerate(spec.stages):
            blocks = make_blocks(
                inplanes, stage.planes, stage.depth, stage.stride, stage.attention,
                heads=spec.heads, dim_head=spec.dim_head, pos_emb=spec.pos_emb, ref_size=ref_size,
                act_layer=act_layer, se_ratio=spec.se_ratio, zero_init_last=spec.zero_init_last,
            )
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            inplanes = stage.planes * 4
            reduction *= stage.stride
            ref_size = _ceil_div(ref_size, stage.stride)
            self.feature_info.append(
                {"num_chs": inplanes, "reduction": reduction, "module": f"layer{index + 1}", "name": STAGE_NAMES[index]}
            )
        self.num_features = inplanes
        self.min_input_size = reduction
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(spec.drop_rate) if spec.drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(inplanes, spec.num_classes) if spec.num_classes > 0 else nn.Identity()

        for module_name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and module.bias is None and not module_name.endswith("attn.qkv"):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming what was expected if ``x`` cannot go through the network."""
        check_feature_map(x, self.in_chans, what=f"{self.name} input")
        height, width = x.shape[-2:]
        if height < self.min_input_size or width < self.min_input_size:
            raise ValueError(
                f"{self.name} input {height}x{width} is too small: both sides must be at least "
                f"{self.min_input_size} px (the network's total stride); resize or pad the image"
            )

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.act(self.bn1(self.conv1(x))))

    def feature_maps(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The c2..c5 maps: {"c2": (B, C2, H/r2, W/r2), ..., "c5": (B, C5, H/r5, W/r5)}."""
        self.check_input(x)
        x = self.forward_stem(x)
        maps: OrderedDict[str, Tensor] = OrderedDict()
        for name, stage in zip(STAGE_NAMES, self.stages):
            x = stage(x)
            maps[name] = x
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> c5 map (B, num_features, ceil(H/stride), ceil(W/stride))."""
        self.check_input(x)
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """c5 map -> (B, num_features) pooled features, or (B, num_classes) logits."""
        x = self.drop(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: no classifier)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc


def build_model(spec: ModelSpec, name: str = "botnet") -> BoTNet:
    """The one builder: a :class:`BoTNet` from a :class:`ModelSpec`."""
    return BoTNet(spec, name=name)
