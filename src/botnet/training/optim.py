"""Parameter groups, optimisers and the one learning-rate schedule every trainer uses.

* :func:`param_groups`: weight decay on conv / linear / attention projection
  weights only; none on norms, biases and position tables (decaying those
  only shrinks scales and offsets the network needs). Frozen parameters
  (``requires_grad=False``, e.g. detection's frozen stages) are left out.
* :func:`create_optimizer`: SGD with Nesterov momentum or AdamW; optional
  per-stage learning-rate decay (timm's ``--layer-decay``, :func:`stage_ids`).
* :func:`lr_schedule`: linear warm-up, then cosine, step or constant, as a
  ``LambdaLR`` stepped once per optimiser step. Its state dict is plain
  numbers, so a run resumes exactly and loads with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "SCHEDULES", "stage_ids", "param_groups", "create_optimizer", "lr_factor", "lr_schedule",
           "warmup_cosine", "current_lr", "optimizer_step"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or ".pos." in f".{name}"


def stage_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's stage from the backbone's ``group_matcher(coarse=True)`` (timm's layer ids).

    The first submodule with a ``group_matcher`` (the model itself for a
    classifier, ``backbone.body`` in a detector) is the backbone: its stem is
    stage 0 and ``layerK`` stage K. Every other parameter (the classifier,
    an FPN, detection heads) is in the top stage, ``max + 1``, as timm puts
    the classifier.

    Returns:
        ({parameter name: stage}, top stage).
    """
    import re

    backbone = next(((name, module) for name, module in model.named_modules() if hasattr(module, "group_matcher")),
                     None)
    if backbone is None:
        raise ValueError(f"--layer-decay needs a model with timm's group_matcher; {type(model).__name__} has none")
    prefix, module = backbone[0] + "." if backbone[0] else "", backbone[1]
    matcher = module.group_matcher(coarse=True)
    stem, blocks = re.compile(matcher["stem"]), re.compile(matcher["blocks"])
    ids: dict[str, int] = {}
    for name, _ in module.named_parameters():
        match = blocks.match(name)
        if match:
            ids[prefix + name] = int(match.group(1))
        elif stem.match(name):
            ids[prefix + name] = 0
    top = max(ids.values(), default=0) + 1
    return {name: ids.get(name, top) for name, _ in model.named_parameters()}, top


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Two groups: ``{"params": decayed, "weight_decay": wd}`` and the rest with 0.

    With ``layer_decay`` F (timm's ``param_groups_layer_decay``, per stage):
    those two per stage of :func:`stage_ids`, each with ``"lr_scale"``
    F^(top - stage), so the head keeps the full rate and the stem gets the
    smallest: earlier features are more general and should move least.
    """
    if layer_decay is None:
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if _no_decay(name, param) else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    ids, top = stage_ids(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        stage, undecayed = ids[name], _no_decay(name, param)
        group = groups.setdefault((stage, undecayed), {
            "params": [], "weight_decay": 0.0 if undecayed else weight_decay,
            "lr_scale": layer_decay ** (top - stage), "stage": stage,
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def create_optimizer(
    model: nn.Module, name: str = "sgd", lr: float = 0.1, weight_decay: float = 5e-5, momentum: float = 0.9,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """``name``: ``"sgd"`` (Nesterov momentum) or ``"adamw"`` (betas 0.9, 0.999).

    With ``layer_decay``, each group's ``lr`` is ``lr x lr_scale``
    (:func:`param_groups`); the schedule multiplies every group's rate by
    the same factor.
    """
    groups = param_groups(model, weight_decay, layer_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters")
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = lr * group["lr_scale"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    kind: str = "cosine",
    milestones: Sequence[int] = (),
    decay_rate: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> float:
    """The LR multiplier at optimiser step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps``
    steps (the first step already moves the weights). Then ``cosine`` from
    1 to ``min_lr_ratio`` over the remaining steps, ``step`` (times
    ``decay_rate`` at each step index in ``milestones``; Mask R-CNN's
    schedules) or ``constant``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":
        return decay_rate ** sum(step >= m for m in milestones)
    if kind == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    kind: str = "cosine",
    milestones: Sequence[int] = (),
    decay_rate: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`; the warm-up is cut to leave at least one step after it."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    milestones = tuple(milestones)

    # A plain function: LambdaLR then saves only the step count, so a resumed run with more
    # epochs follows the schedule of its new length.
    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, kind, milestones, decay_rate, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine to ``min_lr_ratio`` (:func:`lr_schedule` with ``kind="cosine"``)."""
    return lr_schedule(optimizer, total_steps, warmup_steps, "cosine", min_lr_ratio=min_lr_ratio)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
) -> None:
    """One optimiser step after the backward pass: unscale (fp16), clip ``params``' gradient norm, step the
    optimiser through the scaler, update the scaler, step the schedule."""
    if clip_grad:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest group rate: the schedule's rate (with layer decay, the head's)."""
    return float(max(group["lr"] for group in optimizer.param_groups))
