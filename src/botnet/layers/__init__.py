"""Building blocks: attention, position logits, bottlenecks."""

from .attention import attention_math, check_feature_map, self_attention
from .attention_paths import BACKENDS as ATTENTION_BACKENDS
from .blocks import BoTBlock, Bottleneck, BottleStack, SqueezeExcite, attend, make_blocks
from .mhsa import MHSA2d, set_attention_backend
from .pooling import GLOBAL_POOL_TYPES, GlobalPool2d
from .position import AbsolutePosition2d, RelativePosition2d, resize_table

__all__ = [
    "ATTENTION_BACKENDS",
    "AbsolutePosition2d",
    "BoTBlock",
    "BottleStack",
    "GLOBAL_POOL_TYPES",
    "GlobalPool2d",
    "Bottleneck",
    "MHSA2d",
    "RelativePosition2d",
    "SqueezeExcite",
    "attend",
    "attention_math",
    "check_feature_map",
    "make_blocks",
    "resize_table",
    "self_attention",
    "set_attention_backend",
]
