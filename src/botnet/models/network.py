"""The one network class behind every model, and its builder."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from ..layers.attention import check_feature_map
from ..layers.blocks import ACT_LAYERS, NormLayer, make_blocks
from ..layers.pooling import GlobalPool2d, check_global_pool
from .grad_checkpoint import checkpoint_blocks
from .indices import take_indices
from .pretrained_cfg import pretrained_cfg
from .spec import ModelSpec

__all__ = ["BoTNet", "build_model", "STAGE_NAMES", "check_image"]

STAGE_NAMES = ("c2", "c3", "c4", "c5")


def _ceil_div(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-size[0] // stride), -(-size[1] // stride))


# Kept by fx's dead-code elimination although nothing uses its (None) result.
_fx_keep = getattr(torch.fx.node, "has_side_effect", lambda fn: fn)


@_fx_keep
@torch.fx.wrap
def check_image(x: Tensor, in_chans: int, min_size: int, what: str) -> None:
    """Raise a ValueError naming what was expected unless ``x`` is (B, in_chans, H, W), H and W >= min_size.

    A leaf for torch.fx (``torch.fx.wrap``, and marked as having a side
    effect): symbolic tracing, e.g. torchvision's ``create_feature_extractor``,
    records the call instead of running these Python comparisons on proxies,
    and keeps it, so a traced model still checks every real input.
    """
    check_feature_map(x, in_chans, what=what)
    height, width = x.shape[-2:]
    if height < min_size or width < min_size:
        raise ValueError(
            f"{what} {height}x{width} is too small: both sides must be at least "
            f"{min_size} px (the network's total stride); resize or pad the image"
        )


class BoTNet(nn.Module):
    """A ResNet whose stages may hold BoT blocks; ``resnet50`` is torchvision's exactly.

    Submodules carry torchvision's names (``conv1``, ``bn1``, ``maxpool``,
    ``layer1``..``layer4``, ``fc``), so torchvision / timm ResNet state dicts
    load by name and torchvision's detection utilities find the stages.

    It also has timm's model interface (``num_features``,
    ``head_hidden_size``, ``global_pool``, ``forward_head``,
    ``forward_intermediates``, ``prune_intermediate_layers``,
    ``set_grad_checkpointing``, ``group_matcher``, ``reset_classifier``,
    ``pretrained_cfg``, ``feature_info``) without needing timm installed.
    Feature levels (``feature_info``, ``indices``, timm's ``out_indices``)
    are the four stages c2..c5, numbered 0..3.

    Shape: (B, in_chans, H, W) -> (B, num_classes). Any H, W of at least
    ``min_input_size`` (the network's total stride).
    """

    def __init__(self, spec: ModelSpec, name: str = "botnet", norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if spec.act not in ACT_LAYERS:
            raise ValueError(f"act must be one of {sorted(ACT_LAYERS)}, got {spec.act!r}")
        if spec.stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {spec.stem!r}")
        check_global_pool(spec.global_pool)
        self.spec = spec
        self.name = name
        self.in_chans = spec.in_chans
        self.num_classes = spec.num_classes
        self.grad_checkpointing = False
        act_layer = ACT_LAYERS[spec.act]

        # Children are registered in forward order: torchvision's
        # IntermediateLayerGetter and timm's feature wrappers run them so.
        imagenet_stem = spec.stem == "imagenet"
        self.conv1 = nn.Conv2d(
            spec.in_chans, spec.stem_width, kernel_size=7 if imagenet_stem else 3,
            stride=2 if imagenet_stem else 1, padding=3 if imagenet_stem else 1, bias=False,
        )
        self.bn1 = norm_layer(spec.stem_width)
        self.act = act_layer(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        reduction = 4 if imagenet_stem else 1

        ref_size = _ceil_div(spec.ref_img_size, reduction)
        inplanes = spec.stem_width
        self.feature_info: list[dict[str, Any]] = []
        for index, stage in enumerate(spec.stages):
            blocks = make_blocks(
                inplanes, stage.planes, stage.depth, stage.stride, stage.attention,
                heads=spec.heads, dim_head=spec.dim_head, pos_emb=spec.pos_emb, ref_size=ref_size,
                act_layer=act_layer, se_ratio=spec.se_ratio, zero_init_last=spec.zero_init_last,
                norm_layer=norm_layer,
            )
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            inplanes = stage.planes * 4
            reduction *= stage.stride
            ref_size = _ceil_div(ref_size, stage.stride)
            self.feature_info.append(
                {"num_chs": inplanes, "reduction": reduction, "module": f"layer{index + 1}", "name": STAGE_NAMES[index]}
            )
        #: Channels of the c5 map (what ``forward_features`` returns).
        self.num_features = inplanes
        self.min_input_size = reduction
        self.global_pool = GlobalPool2d(spec.global_pool)
        #: Width of the pooled features the classifier reads (``forward_head(x, pre_logits=True)``).
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.drop = nn.Dropout(spec.drop_rate) if spec.drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = self._classifier(spec.num_classes)
        #: timm's model config (input size, mean/std, first conv, classifier); no weights.
        self.pretrained_cfg = pretrained_cfg(spec)
        self.default_cfg = self.pretrained_cfg  # timm's older name for it

        for module_name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and module.bias is None and not module_name.endswith("attn.qkv"):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming what was expected if ``x`` cannot go through the network."""
        check_image(x, self.in_chans, self.min_input_size, f"{self.name} input")

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.act(self.bn1(self.conv1(x))))

    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        # Checkpointing only pays when autograd records; fx proxies are traced through plainly.
        if self.grad_checkpointing and torch.is_grad_enabled() and not isinstance(x, torch.fx.Proxy):
            return checkpoint_blocks(stage, x)
        return stage(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> c5 map (B, num_features, ceil(H/stride), ceil(W/stride))."""
        self.check_input(x)
        x = self.forward_stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return x

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs on the way to the c5 map, timm's signature and semantics.

        Args:
            x: (B, in_chans, H, W) images.
            indices: which stages' outputs (0..3 = c2..c5): None all, an int
                ``n`` the last ``n``, a sequence the ones named (negative
                from the end).
            norm: accepted for timm's interface; a ResNet has no final norm.
            stop_early: stop after the last stage asked for; the returned
                final map is then that stage's output.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return the list alone (and stop early).

        Returns:
            ``(final map, [maps])`` or ``[maps]``; map ``i`` is
            (B, feature_info[i]["num_chs"], ceil(H / r_i), ceil(W / r_i)) with
            ``r_i = feature_info[i]["reduction"]``, in stage order.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' (maps are (B, C, H, W)), got {output_fmt!r}")
        taken, last = take_indices(len(self.feature_info), indices)
        for index in taken:
            if len(self.stages[index]) == 0:
                raise ValueError(
                    f"stage {STAGE_NAMES[index]} (index {index}) was removed by prune_intermediate_layers; "
                    f"indices up to {max(i for i, s in enumerate(self.stages) if len(s))} remain"
                )
        self.check_input(x)
        x = self.forward_stem(x)
        stages = self.stages[: last + 1] if stop_early or intermediates_only else self.stages
        intermediates: list[Tensor] = []
        for index, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if index in taken:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def feature_maps(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The c2..c5 maps: {"c2": (B, C2, H/r2, W/r2), ..., "c5": (B, C5, H/r5, W/r5)}."""
        maps = self.forward_intermediates(x, intermediates_only=True)
        return OrderedDict(zip(STAGE_NAMES, maps))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """c5 map (B, num_features, h, w) -> logits (B, num_classes), or (B, head_hidden_size) pre-logits.

        With ``global_pool=""`` nothing is pooled: pre-logits are the map
        itself, and a classifier is applied at every position, giving
        (B, num_classes, h, w) logits whose spatial mean is what
        ``global_pool="avg"`` gives with the same ``fc`` (the classifier is
        linear).
        """
        x = self.drop(self.global_pool(x))
        if pre_logits:
            return x
        if self.global_pool.is_identity() and self.num_classes > 0:
            return self.fc(x.movedim(1, -1)).movedim(-1, 1)
        return self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def _classifier(self, num_classes: int) -> nn.Module:
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        if num_classes == 0:
            return nn.Identity()
        weight = self.conv1.weight
        return nn.Linear(self.head_hidden_size, num_classes, device=weight.device, dtype=weight.dtype)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none), and the pooling ``global_pool`` (None: keep it).

        As timm's: ``reset_classifier(0)`` makes ``forward`` return pooled
        features (B, head_hidden_size), ``reset_classifier(0, "")`` the c5
        map. The classifier is created on the model's device and dtype.
        """
        if global_pool is not None:
            self.global_pool = GlobalPool2d(global_pool)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc = self._classifier(num_classes)
        self.num_classes = num_classes
        # Keep the description in step, so that a saved model is rebuilt with this head.
        self.spec = dataclasses.replace(self.spec, num_classes=num_classes, global_pool=self.global_pool.pool_type)

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "fc" if name_only else self.fc

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the classifier), timm's semantics.

        What ``timm.create_model(..., features_only=True, feature_cls="getter")``
        calls: the dropped stages become empty ``nn.Sequential``s (no
        parameters, no compute). If a stage was dropped, ``num_features``
        becomes the last kept stage's channels and the head is removed; with
        ``prune_head`` (default) it is removed anyway. ``prune_norm`` is
        accepted for timm's interface (there is no final norm).

        Returns:
            The absolute indices kept, as :meth:`forward_intermediates` takes them.
        """
        taken, last = take_indices(len(self.feature_info), indices)
        for index in range(last + 1, len(self.feature_info)):
            setattr(self, f"layer{index + 1}", nn.Sequential())
        if last < len(self.feature_info) - 1:
            self.num_features = self.feature_info[last]["num_chs"]
            self.min_input_size = self.feature_info[last]["reduction"]
        if prune_head or last < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return taken

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every residual block in training (:mod:`botnet.models.grad_checkpoint`).

        Outputs, gradients and BatchNorm running statistics stay exactly those
        of a plain step; memory falls to the blocks' inputs plus one block's
        activations, for about one more forward pass of compute.
        """
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's parameter groups (layer-wise LR decay, freezing): the stem, then stages or blocks.

        Regexes on parameter names; the classifier matches neither and
        forms the last group (timm's convention).
        """
        return {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}


def build_model(spec: ModelSpec, name: str = "botnet", norm_layer: NormLayer | None = None) -> BoTNet:
    """The one builder: a :class:`BoTNet` from a :class:`ModelSpec`."""
    return BoTNet(spec, name=name, norm_layer=norm_layer or nn.BatchNorm2d)
