"""Model architectures, the builder and the registry."""

from .network import STAGE_NAMES, BoTNet, build_model
from .registry import create_model, get_model_spec, list_models, register_model
from .spec import ModelSpec, StageSpec

__all__ = [
    "STAGE_NAMES",
    "BoTNet",
    "ModelSpec",
    "StageSpec",
    "build_model",
    "create_model",
    "get_model_spec",
    "list_models",
    "register_model",
]
