"""Start a BoTNet from ResNet weights (torchvision or timm layout)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..layers.blocks import BoTBlock
from .transfer import LoadReport, read_state_dict, transfer_state, unwrap_state_dict

if TYPE_CHECKING:
    from .network import BoTNet

__all__ = ["LoadReport", "botnet50_from_torchvision", "load_resnet_weights", "read_state_dict"]


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
        state = unwrap_state_dict(source, "the given source")

    exclude = {f"{name}.": "inside an attention (BoT) block"
               for name, module in model.named_modules() if isinstance(module, BoTBlock)}
    if not include_classifier:
        exclude["fc."] = "classifier (include_classifier=False)"
    report = transfer_state(
        model, state, exclude=exclude, source=repr(os.fspath(source)) if isinstance(source, (str, os.PathLike))
        else "the given source",
        hint="expected a torchvision/timm ResNet state dict with keys like 'conv1.weight', 'layer1.0.conv1.weight'",
    )
    if verbose:
        print(report.summary())
    return report


def botnet50_from_torchvision(resnet: nn.Module, num_classes: int | None = None, **overrides: object) -> BoTNet:
    """The paper's BoT50 from a torchvision ``resnet50``: its stem and c2-c4 (weights and BN statistics) kept.

    What bottleneck-transformer-pytorch users build by hand with
    ``nn.Sequential(*list(resnet.children())[:7], BottleStack(dim=1024, ...))``,
    as one call that returns ``create_model("botnet50")`` itself (same
    modules, names, ``feature_maps``, timm interface, checkpoints): c5
    (``layer4``) is three fresh BoT blocks, the classifier is fresh, and
    everything before c5 is copied with :func:`load_resnet_weights`, so
    ``model.feature_maps(x)`` c2..c4 equal the ResNet's ``layer1``..``layer3``
    outputs bit for bit (in eval mode).

    Args:
        resnet: ``torchvision.models.resnet50(...)`` (any weights, any
            number of classes, any input channels), or a timm ``resnet50``.
        num_classes: classifier outputs; None: as many as ``resnet.fc``.
        **overrides: :class:`~botnet.ModelSpec` fields, e.g. ``ref_img_size=1024``.

    Returns:
        A :class:`~botnet.BoTNet` on the ResNet's device and dtype, in its
        train/eval mode.

    Raises:
        ValueError: ``resnet`` is not a ResNet-50 (a tensor of its stem or
            c2-c4 has no counterpart of the same shape in botnet50).

    Example:
        >>> resnet = torchvision.models.resnet50(weights="IMAGENET1K_V2")
        >>> model = botnet.botnet50_from_torchvision(resnet, num_classes=10)
    """
    from .registry import create_model

    weight = resnet.conv1.weight
    fc = getattr(resnet, "fc", None)
    if num_classes is None:
        num_classes = fc.out_features if isinstance(fc, nn.Linear) else 0
    model = create_model("botnet50", num_classes=num_classes, in_chans=weight.shape[1], **overrides)
    report = load_resnet_weights(model, resnet.state_dict())
    # Everything outside c5 and the classifier must have been copied: a ResNet-101 or a
    # ResNeXt has tensors botnet50 lacks or shapes it does not share.
    unused = {k: why for k, why in report.skipped.items() if not k.startswith(("layer4.", "fc."))}
    unused.update({k: "not in the ResNet" for k in report.missing if not k.startswith(("layer4.", "fc."))})
    if unused:
        first = sorted(unused)[:3]
        raise ValueError(
            f"expected a torchvision resnet50 (Bottleneck stages of depth 3, 4, 6, 3, width 64..512); "
            f"{len(unused)} stem/c2-c4 tensors do not match botnet50's, e.g. "
            + ", ".join(f"{k} ({unused[k]})" for k in first)
        )
    return model.to(device=weight.device, dtype=weight.dtype).train(resnet.training)
