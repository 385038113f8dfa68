"""Freezing the earliest stages of a backbone: torchvision's ``trainable_layers``, for every task.

``trainable_layers = N`` (0-5) trains the last N of (stem, layer1, layer2,
layer3, layer4), counted from layer4 back: 5 trains everything, 3 freezes
the stem, layer1 and layer2 (torchvision's detection default with
pretrained weights), 0 freezes the whole backbone. Anything outside the
stem and stages (a classifier, an FPN, detection heads) is never frozen
here.
"""

from __future__ import annotations

import types

from torch import nn

__all__ = ["MAX_TRAINABLE_LAYERS", "TRAINABLE_ORDER", "freeze_stages", "frozen_prefixes"]

# torchvision's order: the first k are trained with trainable_layers = k. The stem is conv1 with its bn1.
TRAINABLE_ORDER: tuple[tuple[str, ...], ...] = (("layer4",), ("layer3",), ("layer2",), ("layer1",), ("conv1", "bn1"))
MAX_TRAINABLE_LAYERS = len(TRAINABLE_ORDER)


def frozen_prefixes(trainable_layers: int) -> tuple[str, ...]:
    """Module names frozen by ``trainable_layers`` (e.g. 3 -> ``("layer2", "layer1", "conv1", "bn1")``)."""
    if not 0 <= trainable_layers <= MAX_TRAINABLE_LAYERS:
        raise ValueError(f"trainable_layers must be in 0..{MAX_TRAINABLE_LAYERS} (stages trained, from layer4 back "
                         f"to the stem), got {trainable_layers}")
    return tuple(name for names in TRAINABLE_ORDER[trainable_layers:] for name in names)


def _stay_in_eval(module: nn.Module) -> None:
    """Make ``module.train()`` a no-op that keeps it (and its children) in eval mode."""

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        return nn.Module.train(self, False)

    module.train = types.MethodType(train, module)  # type: ignore[method-assign]
    module.eval()


def freeze_stages(model: nn.Module, trainable_layers: int, *, prefix: str = "", eval_mode: bool = False) -> list[str]:
    """Stop gradients into the stages ``trainable_layers`` leaves out (see the module docstring).

    Args:
        model: a BoTNet / ResNet (or a module holding one at ``prefix``).
        prefix: where the backbone sits in ``model`` (e.g. ``"backbone.body."``).
        eval_mode: also keep the frozen stages in eval mode for good, so their
            BatchNorm layers normalise with the loaded running statistics and
            never update them (what FrozenBatchNorm2d does, while the state
            dict keeps its layout and loads into an unfrozen model). Without
            it, a frozen stage's BN still normalises with batch statistics in
            training; detection uses FrozenBatchNorm2d instead.

    Returns:
        The frozen module names.
    """
    names = frozen_prefixes(trainable_layers)
    starts = tuple(f"{prefix}{name}." for name in names)
    for param_name, param in model.named_parameters():
        if param_name.startswith(starts):
            param.requires_grad_(False)
    if eval_mode:
        modules = dict(model.named_modules())
        for name in names:
            module = modules.get(f"{prefix}{name}")
            if module is not None:
                _stay_in_eval(module)
    return list(names)
