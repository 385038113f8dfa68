"""Building blocks: attention, position logits, bottlenecks."""

from .attention import attention_math, check_feature_map, self_attention
from .attention_paths import BACKENDS as ATTENTION_BACKENDS
from .blocks import BoTBlock, Bottleneck, BottleStack, SqueezeExcite, make_blocks
from .mhsa import MHSA2d, set_attention_backend
from .position import AbsolutePosition2d, RelativePosition2d, resize_table

__all__ = [
    "ATTENTION_BACKENDS",
    "AbsolutePosition2d",
    "BoTBlock",
    "BottleStack",
    "Bottleneck",
    "MHSA2d",
    "RelativePosition2d",
    "SqueezeExcite",
    "attention_math",
    "check_feature_map",
    "make_blocks",
    "resize_table",
    "self_attention",
    "set_attention_backend",
]
