"""Optimiser and learning-rate schedule for training BoTNets.

* :func:`param_groups`: weight decay on conv / linear / attention projection
  weights only; none on norms, biases and position tables (decaying those
  only shrinks scales and offsets the network needs).
* :func:`create_optimizer`: SGD with Nesterov momentum or AdamW.
* :func:`warmup_cosine`: linear warm-up then cosine decay, stepped per
  iteration through ``LambdaLR`` (whose state dict is plain numbers, so it
  resumes exactly and loads with ``weights_only=True``).
"""

from __future__ import annotations

import math
import torch
from torch import nn

__all__ = ["param_groups", "create_optimizer", "warmup_cosine", "current_lr", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adamw")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or ".pos." in f".{name}"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ``{"params": decayed, "weight_decay": wd}`` and the rest with 0."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(
    model: nn.Module, name: str = "sgd", lr: float = 0.1, weight_decay: float = 5e-5, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``name``: ``"sgd"`` (Nesterov momentum) or ``"adamw"`` (betas 0.9, 0.999)."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor: linear from 1/warmup to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])

