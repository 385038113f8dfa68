"""Old import path of the detection training and evaluation loops (kept for one release).

Training lives in :mod:`botnet.detection.train`, evaluation in
:mod:`botnet.detection.evaluate`, the schedule in :mod:`botnet.training.optim`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..training.optim import lr_factor
from .evaluate import evaluate, predict  # noqa: F401
from .train import train_one_epoch  # noqa: F401

__all__ = ["evaluate", "predict", "train_one_epoch", "warmup_schedule"]


def warmup_schedule(
    total_iters: int, warmup_iters: int, *, kind: str = "cosine", steps: Sequence[int] = (), gamma: float = 0.1
) -> Callable[[int], float]:
    """LR multiplier per iteration for ``LambdaLR``: :func:`botnet.training.optim.lr_factor` with these names."""
    warmup_iters = max(0, min(warmup_iters, total_iters - 1))
    milestones = tuple(steps)
    return lambda it: lr_factor(it, total_iters, warmup_iters, kind, milestones, gamma)
