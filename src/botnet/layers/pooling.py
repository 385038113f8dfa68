"""Global pooling of a feature map for the classifier head (timm's ``global_pool`` types)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GLOBAL_POOL_TYPES", "GlobalPool2d", "check_global_pool"]

#: The pooling types timm's models accept, with the same meaning.
GLOBAL_POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def check_global_pool(pool_type: str) -> str:
    """Return ``pool_type`` if it is one of :data:`GLOBAL_POOL_TYPES`, else raise a ValueError."""
    if pool_type not in GLOBAL_POOL_TYPES:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOL_TYPES} ('' for no pooling), got {pool_type!r}")
    return pool_type


class GlobalPool2d(nn.Module):
    """Pool a (B, C, H, W) map over all positions into (B, C * feat_mult()).

    ``"avg"`` is torchvision's ResNet head (``AdaptiveAvgPool2d(1)`` then
    flatten, the same kernels, so botnet's ``resnet50`` gives torchvision's
    logits bit for bit); ``"max"`` takes the maximum; ``"avgmax"`` the mean
    of the two (C features); ``"catavgmax"`` concatenates them, average
    first (2C features, as in timm, so the classifier's input doubles);
    ``""`` does not pool and returns the map unchanged.

    Shape: (B, C, H, W) -> (B, C * feat_mult()), or (B, C, H, W) for ``""``.
    """

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        self.pool_type = check_global_pool(pool_type)

    def feat_mult(self) -> int:
        """Output features per input channel: 2 for ``catavgmax``, else 1."""
        return 2 if self.pool_type == "catavgmax" else 1

    def is_identity(self) -> bool:
        return self.pool_type == ""

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.pool_type == "max":
            return torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        avg = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        peak = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        if self.pool_type == "avgmax":
            return 0.5 * (avg + peak)
        return torch.cat([avg, peak], dim=1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"
