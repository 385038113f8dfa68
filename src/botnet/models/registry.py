"""Named architectures and ``create_model`` / ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

from ..layers.blocks import NormLayer
from .network import BoTNet, build_model
from .spec import ModelSpec, StageSpec

__all__ = ["register_model", "create_model", "list_models", "get_model_spec"]

_MODEL_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec) -> ModelSpec:
    """Add an architecture under ``name`` (ValueError if the name is taken)."""
    if name in _MODEL_SPECS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_SPECS[name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODEL_SPECS if fnmatch.fnmatch(n, pattern))


def get_model_spec(name: str) -> ModelSpec:
    """The registered spec for ``name``; a ValueError suggests close names."""
    try:
        return _MODEL_SPECS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODEL_SPECS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(list_models())})") from None


def create_model(
    name: str, num_classes: int = 1000, in_chans: int = 3, norm_layer: NormLayer | None = None, **overrides: Any
) -> BoTNet:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: classifier outputs (0: no classifier, features only).
        in_chans: input channels.
        norm_layer: the normalisation of every block and the stem, a
            callable of the channel count as in torchvision (default
            ``nn.BatchNorm2d``; e.g. ``torchvision.ops.misc.FrozenBatchNorm2d``).
        **overrides: any :class:`ModelSpec` field, e.g. ``pos_emb="absolute"``,
            ``act="silu"``, ``heads=8``, ``ref_img_size=256``.

    Example:
        >>> model = create_model("botnet50", num_classes=10)
        >>> model(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 10])
    """
    if overrides.pop("pretrained", False):
        raise ValueError(
            "no pretrained BoTNet weights are published; start from ResNet weights with "
            "botnet.load_resnet_weights(model, path) instead"
        )
    spec = get_model_spec(name).with_overrides(num_classes=num_classes, in_chans=in_chans, **overrides)
    return build_model(spec, name=name, norm_layer=norm_layer)


def _resnet50_stages(c5_attention: int) -> tuple[StageSpec, StageSpec, StageSpec, StageSpec]:
    return (
        StageSpec(3, 64, 1),
        StageSpec(4, 128, 2),
        StageSpec(6, 256, 2),
        StageSpec(3, 512, 2, attention=c5_attention),
    )


def _s1_stages(c4_depth: int, c5_depth: int) -> tuple[StageSpec, StageSpec, StageSpec, StageSpec]:
    # S1: c5 keeps stride 1 (output stride 16) and every c5 block attends.
    return (
        StageSpec(3, 64, 1),
        StageSpec(4, 128, 2),
        StageSpec(c4_depth, 256, 2),
        StageSpec(c5_depth, 512, 1, attention=c5_depth),
    )


register_model("resnet50", ModelSpec(_resnet50_stages(0), description="torchvision's ResNet-50 (v1.5)"))
register_model("botnet50", ModelSpec(_resnet50_stages(3), description="BoT50: ResNet-50 with c5 as BoT blocks"))

_S1 = dict(act="silu", se_ratio=0.0625)
register_model("botnet_s1_59", ModelSpec(_s1_stages(6, 6), **_S1, description="BoTNet-S1-59 [3,4,6,6]"))
register_model("botnet_s1_77", ModelSpec(_s1_stages(6, 12), **_S1, description="BoTNet-S1-77 [3,4,6,12]"))
register_model("botnet_s1_110", ModelSpec(_s1_stages(23, 6), **_S1, description="BoTNet-S1-110 [3,4,23,6]"))
register_model("botnet_s1_128", ModelSpec(_s1_stages(23, 12), **_S1, description="BoTNet-S1-128 [3,4,23,12]"))


def _small_stages(
    depths: tuple[int, int, int, int], planes: tuple[int, int, int, int], c5_attention: int
) -> tuple[StageSpec, StageSpec, StageSpec, StageSpec]:
    # Stride-1 stem and c2, then 2, 2, 2: output stride 8, so a 32 px image
    # gives an 8x8 map for the first c5 block to attend over.
    return (
        StageSpec(depths[0], planes[0], 1),
        StageSpec(depths[1], planes[1], 2),
        StageSpec(depths[2], planes[2], 2),
        StageSpec(depths[3], planes[3], 2, attention=min(c5_attention, depths[3])),
    )


_TINY = dict(stem="small", stem_width=32, ref_img_size=32)
register_model(
    "resnet_tiny", ModelSpec(_small_stages((1, 1, 1, 1), (16, 32, 64, 128), 0), **_TINY,
                             description="small ResNet for 28-64 px images (CPU)")
)
register_model(
    "botnet_tiny", ModelSpec(_small_stages((1, 1, 1, 1), (16, 32, 64, 128), 1), **_TINY,
                             description="small BoTNet for 28-64 px images (CPU)")
)
register_model(
    "resnet26", ModelSpec(_small_stages((2, 2, 2, 2), (32, 64, 128, 256), 0), **_TINY,
                          description="ResNet-26 at half width, small stem, for 28-64 px images")
)
register_model(
    "botnet26", ModelSpec(_small_stages((2, 2, 2, 2), (32, 64, 128, 256), 2), **_TINY,
                          description="BoTNet-26 at half width, small stem, c5 attends")
)


def _stride4_stages(planes: tuple[int, int, int, int], c5_attention: int) -> tuple[StageSpec, ...]:
    # c2 and c3 downsample, c4 and c5 keep 1/4 of the input: the expensive full-resolution
    # stage of the *_tiny models is gone (about 2x faster on a CPU), and c5 still attends
    # over 7x7 positions at 28 px (8x8 at 32 px).
    return (
        StageSpec(1, planes[0], 2),
        StageSpec(1, planes[1], 2),
        StageSpec(1, planes[2], 1),
        StageSpec(1, planes[3], 1, attention=c5_attention),
    )


# zero_init_last=False: with one block per stage, zero-initialised residual branches make the
# network start as a near-linear chain of shortcut projections and learn several times slower
# in short runs (digits at 16 px, 3 epochs, no augmentation: 92% with it, 99% without).
_MINI = dict(stem="small", stem_width=32, ref_img_size=32, zero_init_last=False)
register_model(
    "resnet_mini", ModelSpec(_stride4_stages((16, 32, 64, 128), 0), **_MINI,
                             description="small ResNet, output stride 4, for 16-32 px images (fast on CPU)")
)
register_model(
    "botnet_mini", ModelSpec(_stride4_stages((16, 32, 64, 128), 1), **_MINI,
                             description="small BoTNet, output stride 4: c5 attends over 7x7 at 28 px (fast on CPU)")
)


# Fashion-MNIST pair for a 2-core CPU budget (issue 12), measured on 28 px inputs (the measurements: docs/RESULTS.md,
# "Fashion-MNIST: the shipped 20-minute CPU recipe"). The botnet_mini shape: c5 attends over 7x7. Attention over 14x14 (c5 stride 2, pooling
# after attention) made the BoT block 1.9x slower per training image than its conv twin (86 vs 160 img per
# CPU-second), so c5 stays at 7x7. q, k, v are 3 * planes^2 weights where the twin's 3x3 conv has 9 * planes^2:
# with dim_head = planes // heads the BoTNet has 19 % fewer parameters than its twin (0.413M vs 0.511M).
# dim_head 64 (attention 256 wide, twice planes) restores parameter parity: 0.529M vs 0.511M (+3.6 %),
# 28.6 vs 26.2 MMAC per 28 px image. Everything else is the same network as resnet_fmnist.
_FMNIST = dict(stem="small", stem_width=32, ref_img_size=28, zero_init_last=False)
register_model(
    "resnet_fmnist", ModelSpec(_stride4_stages((16, 32, 64, 128), 0), **_FMNIST,
                               description="ResNet twin of botnet_fmnist (28 px, CPU budget; = resnet_mini)")
)
register_model(
    "botnet_fmnist", ModelSpec(_stride4_stages((16, 32, 64, 128), 1), **_FMNIST, heads=4, dim_head=64,
                               description="BoTNet for 28 px on a CPU: c5 attends 7x7, 4 heads x 64, params = its twin's")
)
