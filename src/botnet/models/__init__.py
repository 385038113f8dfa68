"""The model half: architectures as data, the one builder, the registry, and what describes a model.

* :mod:`~botnet.models.spec`: :class:`ModelSpec` / :class:`StageSpec` (and their JSON form);
* :mod:`~botnet.models.network`: :class:`BoTNet` and :func:`build_model`;
* :mod:`~botnet.models.registry`: named specs, :func:`create_model`;
* :mod:`~botnet.models.weights`: starting from ResNet weights;
* :mod:`~botnet.models.summary`: per-stage shapes, parameters, FLOPs;
* :mod:`~botnet.models.timm_models`: the models in timm's registry;
* :mod:`~botnet.models.pretrained_cfg`, :mod:`~botnet.models.indices`,
  :mod:`~botnet.models.grad_checkpoint`: the timm interface's pieces.
"""

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
