"""Start a BoTNet from ResNet weights (torchvision or timm layout)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .layers.blocks import BoTBlock

__all__ = ["LoadReport", "load_resnet_weights", "read_state_dict"]


@dataclass
class LoadReport:
    """What :func:`load_resnet_weights` did.

    Attributes:
        loaded: model keys filled from the source.
        skipped: source keys not used, with the reason.
        missing: model keys left at their initial values.
    """

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, left {len(self.missing)} at init"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from .safetensors or a torch file, never unpickling code.

    Accepts a bare state dict or one wrapped under ``state_dict``, ``model``
    or ``model_state`` (common checkpoint layouts), and strips a DDP
    ``module.`` prefix. A damaged file or one that carries pickled objects is
    a one-line error from :mod:`botnet.checkpoint` naming the file.
    """
    from .checkpoint import load_checkpoint, read_safetensors

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    state = read_safetensors(path)[0] if path.endswith(".safetensors") else load_checkpoint(path)
    return _unwrap_state_dict(state, repr(path))


def _unwrap_state_dict(state: object, what: str) -> dict[str, Tensor]:
    """The tensors of a bare or wrapped (``state_dict``/``model``/``model_state``) state dict."""
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{what} does not hold a state dict (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    consume_prefix_in_state_dict_if_present(tensors, "module.")  # DistributedDataParallel's wrapper
    return tensors


def load_resnet_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    include_classifier: bool = False,
    verbose: bool = False,
) -> LoadReport:
    """Initialise a BoTNet's convolutional parts from a ResNet state dict.

    The usual ImageNet start for BoT50: stem and c2-c4 (and c5's shortcut
    and 1x1 convs where they are not inside an attention block) from a
    torchvision or timm ``resnet50``, whose parameter names match ours.
    Every tensor of a BoT block stays at its initial value: its BN after
    attention normalises a different signal than the ResNet's 3x3 conv.
    With the weights loaded, c2-c4 (``model.feature_maps(x)``) equal the
    ResNet's ``layer1``-``layer3`` outputs exactly (in eval mode).

    Layouts read (both use torchvision's names: ``conv1``, ``bn1``,
    ``layer{1..4}.{i}.conv{1,2,3}``/``bn{1,2,3}``, ``downsample.{0,1}``, ``fc``):

    * torchvision: ``torch.save(torchvision.models.resnet50(weights=...).state_dict(), "r50.pth")``
      or the downloaded ``resnet50-*.pth`` (a bare state dict);
    * timm: ``timm.create_model("resnet50")`` state dicts, its Hugging Face
      ``model.safetensors`` / ``pytorch_model.bin``, and timm training
      checkpoints (tensors under ``state_dict``; files that also pickle
      objects such as ``args`` are refused, save ``ckpt["state_dict"]`` alone).

    A dict wrapping the state dict under ``state_dict``, ``model`` or
    ``model_state`` and a DDP ``module.`` prefix are handled for paths and
    mappings alike.

    Args:
        model: a model from :func:`botnet.create_model`.
        source: a state dict, or a path to .pth/.pt/.bin/.safetensors.
        include_classifier: also copy ``fc`` when its shape matches.
        verbose: print the report summary.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: no tensor of the source fits the model (not a ResNet
            state dict), or the file is not a plain tensor checkpoint.

    Example:
        >>> model = botnet.create_model("botnet50", num_classes=10)
        >>> report = botnet.load_resnet_weights(model, "resnet50-0676ba61.pth")
        >>> report.summary()
        'loaded 258 tensors, skipped 62, left 68 at init'
    """
    if isinstance(source, (str, os.PathLike)):
        state = read_state_dict(source)
    else:
        state = _unwrap_state_dict(source, "the given source")
    attention_prefixes = tuple(
        f"{name}." for name, module in model.named_modules() if isinstance(module, BoTBlock)
    )
    target = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in target:
            report.skipped[key] = "not in model"
        elif key.startswith(attention_prefixes):
            report.skipped[key] = "inside an attention (BoT) block"
        elif key.startswith("fc.") and not include_classifier:
            report.skipped[key] = "classifier (include_classifier=False)"
        elif target[key].shape != value.shape:
            report.skipped[key] = f"shape {tuple(value.shape)} != model's {tuple(target[key].shape)}"
        else:
            to_load[key] = value
    if not to_load:
        reasons = sorted(set(report.skipped.values()))
        raise ValueError(
            f"no tensor of the source fits the model ({len(state)} source tensors; reasons: {reasons}); "
            "expected a torchvision/timm ResNet state dict with keys like 'conv1.weight', 'layer1.0.conv1.weight'"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(set(target) - set(to_load))
    if verbose:
        print(report.summary())
    return report
