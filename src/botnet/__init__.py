"""botnet: Bottleneck Transformers (Srinivas et al. 2021) for PyTorch.

Paper-exact BoT blocks and models, 2D relative position logits that work at
any input size, and tools to train, inspect and deploy them.
"""

from .runtime import interrupts as _interrupts

# First: when this process is the `botnet` command, a Ctrl-C or SIGTERM while torch and the
# models import (seconds) is one line, not a traceback (botnet.runtime.interrupts).
_interrupts.guard_start()

from . import compat
from .layers import (
    AbsolutePosition2d,
    BoTBlock,
    Bottleneck,
    BottleStack,
    MHSA2d,
    RelativePosition2d,
    SqueezeExcite,
    resize_table,
    self_attention,
)
from .models import BoTNet, ModelSpec, StageSpec, build_model, create_model, list_models, register_model
from .models.timm_models import register_if_timm_installed
from .models.weights import LoadReport, botnet50_from_torchvision, load_resnet_weights

register_if_timm_installed()  # optional: timm.create_model("botnet50") once timm is imported too

__version__ = "0.1.0"

__all__ = [
    "AbsolutePosition2d",
    "BoTBlock",
    "BoTNet",
    "Bottleneck",
    "BottleStack",
    "LoadReport",
    "MHSA2d",
    "ModelSpec",
    "RelativePosition2d",
    "SqueezeExcite",
    "StageSpec",
    "botnet50_from_torchvision",
    "build_model",
    "compat",
    "create_model",
    "list_models",
    "load_resnet_weights",
    "register_model",
    "resize_table",
    "self_attention",
]
