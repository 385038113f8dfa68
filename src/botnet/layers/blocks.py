"""Residual bottleneck blocks: ResNet's, SE-ResNet's and the BoT block.

Module names follow torchvision's ``models/resnet.py`` (conv1, bn1, conv2,
bn2, conv3, bn3, downsample) so ResNet state dicts load by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.fx
from torch import Tensor, nn

from .mhsa import MHSA2d

__all__ = ["SqueezeExcite", "Bottleneck", "BoTBlock", "BottleStack", "make_blocks", "attend", "ACT_LAYERS"]

ActLayer = Callable[..., nn.Module]
# torchvision's convention: a callable of the channel count (nn.BatchNorm2d, FrozenBatchNorm2d,
# nn.SyncBatchNorm, or e.g. lambda c: nn.GroupNorm(32, c)).
NormLayer = Callable[[int], nn.Module]
ACT_LAYERS: dict[str, ActLayer] = {"relu": nn.ReLU, "silu": nn.SiLU}


def _shortcut(inplanes: int, outplanes: int, stride: int, norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Module | None:
    """1x1 conv (with the block's stride) + norm when shape or stride changes, as in the paper."""
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
        norm_layer(outplanes),
    )


@torch.fx.wrap
def attend(attn: nn.Module, x: Tensor) -> Tensor:
    """``attn(x)``, one opaque step for torch.fx symbolic tracing.

    :class:`~botnet.layers.MHSA2d` reads its input's size in Python (to
    resize the position tables and pick an attention path), which symbolic
    tracing cannot do on proxies. Wrapped (``torch.fx.wrap``), the call is
    recorded as one node and runs for real on every input, so a traced
    BoTNet (torchvision's ``create_feature_extractor``, timm's
    ``feature_cls="fx"``) stays correct at every input size. Eager
    execution, torch.compile and export call ``attn(x)`` as before.
    """
    return attn(x)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): channel gates from global context.

    ``reduced = max(1, int(channels * se_ratio))``; the S1 models use
    ``se_ratio=0.0625`` on the block's output channels.
    """

    def __init__(self, channels: int, se_ratio: float = 0.0625) -> None:
        super().__init__()
        reduced = max(1, int(channels * se_ratio))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class _Residual(nn.Module):
    """Shared tail of both bottlenecks: optional SE, shortcut, add, activation."""

    expansion = 4
    act: nn.Module
    se: nn.Module | None
    downsample: nn.Module | None

    def _finish(self, residual: Tensor, x: Tensor) -> Tensor:
        if self.se is not None:
            residual = self.se(residual)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(residual + shortcut)

    def zero_init_last(self) -> None:
        """Zero the last BN's gamma so the block starts as its shortcut."""
        nn.init.zeros_(self.bn3.weight)


class Bottleneck(_Residual):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride here) -> 1x1, x4 expansion.

    Shape: (B, inplanes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride)).
    With ``se_ratio > 0`` it is an SE bottleneck (use ``act_layer=nn.SiLU``
    for the S1 models). ``norm_layer`` as in torchvision (e.g.
    ``FrozenBatchNorm2d`` for detection).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        act_layer: ActLayer = nn.ReLU,
        se_ratio: float = 0.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, kernel_size=1, bias=False)
        self.bn3 = norm_layer(outplanes)
        self.se = SqueezeExcite(outplanes, se_ratio) if se_ratio > 0 else None
        self.act = act_layer(inplace=True)
        self.downsample = _shortcut(inplanes, outplanes, stride, norm_layer)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._finish(out, x)


class BoTBlock(_Residual):
    """Bottleneck Transformer block: the bottleneck with MHSA instead of the 3x3 conv.

    1x1 conv -> BN -> act -> MHSA -> [2x2 avg pool, stride 2, if downsampling]
    -> BN -> act -> 1x1 conv -> BN (gamma zero-initialised by the builder);
    output = act(shortcut + that). The pool comes after attention, so the
    first block of a downsampling stage attends at the higher resolution.
    Pooling uses ``ceil_mode`` (TF 'SAME') so odd sizes match the 1x1 stride-2
    shortcut.

    Shape: (B, inplanes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        heads: int = 4,
        dim_head: int | None = None,
        pos_emb: str = "relative",
        ref_size: int | tuple[int, int] = 14,
        act_layer: ActLayer = nn.ReLU,
        se_ratio: float = 0.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"BoTBlock stride must be 1 or 2, got {stride}")
        if dim_head is None:
            if planes % heads:
                raise ValueError(f"planes={planes} is not divisible by heads={heads}; pass dim_head")
            dim_head = planes // heads
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.attn = MHSA2d(planes, heads=heads, dim_head=dim_head, pos_emb=pos_emb, ref_size=ref_size)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.bn2 = norm_layer(self.attn.out_channels)
        self.conv3 = nn.Conv2d(self.attn.out_channels, outplanes, kernel_size=1, bias=False)
        self.bn3 = norm_layer(outplanes)
        self.se = SqueezeExcite(outplanes, se_ratio) if se_ratio > 0 else None
        self.act = act_layer(inplace=True)
        self.downsample = _shortcut(inplanes, outplanes, stride, norm_layer)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.pool(attend(self.attn, out))
        out = self.act(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return self._finish(out, x)


def make_blocks(
    inplanes: int,
    planes: int,
    depth: int,
    stride: int,
    attention: int = 0,
    *,
    heads: int = 4,
    dim_head: int | None = None,
    pos_emb: str = "relative",
    ref_size: tuple[int, int] = (14, 14),
    act_layer: ActLayer = nn.ReLU,
    se_ratio: float = 0.0,
    zero_init_last: bool = True,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> list[nn.Module]:
    """Blocks of one stage; the first carries the stride and channel change.

    ``attention`` is how many of the stage's *last* blocks are BoT blocks
    (0: plain bottlenecks, ``depth``: all attend). ``ref_size`` is the map
    size entering the stage at the reference image size: each BoT block's
    tables are made for the size it attends at (before its pooling).
    """
    if not 0 <= attention <= depth:
        raise ValueError(f"attention must be in [0, depth={depth}], got {attention}")
    blocks: list[nn.Module] = []
    size = ref_size
    for index in range(depth):
        block_stride = stride if index == 0 else 1
        block_in = inplanes if index == 0 else planes * _Residual.expansion
        block: _Residual
        if index >= depth - attention:
            block = BoTBlock(
                block_in, planes, block_stride, heads=heads, dim_head=dim_head, pos_emb=pos_emb,
                ref_size=size, act_layer=act_layer, se_ratio=se_ratio, norm_layer=norm_layer,
            )
        else:
            block = Bottleneck(block_in, planes, block_stride, act_layer=act_layer, se_ratio=se_ratio,
                               norm_layer=norm_layer)
        if zero_init_last:
            block.zero_init_last()
        blocks.append(block)
        size = (-(-size[0] // block_stride), -(-size[1] // block_stride))
    return blocks


class BottleStack(nn.Sequential):
    """A stage of BoT blocks: the drop-in replacement for a ResNet's last stage.

    ``BottleStack(1024, 512, depth=3, stride=2)`` replaces torchvision
    resnet50's ``layer4`` (1x1 shortcuts, pooling after attention, zero-init
    last BN), giving the paper's BoT50.

    Shape: (B, inplanes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int = 512,
        depth: int = 3,
        stride: int = 2,
        heads: int = 4,
        dim_head: int | None = None,
        pos_emb: str = "relative",
        ref_size: int | tuple[int, int] = 14,
        act_layer: ActLayer = nn.ReLU,
        se_ratio: float = 0.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        size = (ref_size, ref_size) if isinstance(ref_size, int) else tuple(ref_size)
        super().__init__(
            *make_blocks(
                inplanes, planes, depth, stride, attention=depth, heads=heads, dim_head=dim_head,
                pos_emb=pos_emb, ref_size=size, act_layer=act_layer, se_ratio=se_ratio, norm_layer=norm_layer,
            )
        )
