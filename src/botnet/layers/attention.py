"""Self-attention over the positions of a feature map: the functional core.

A (B, C, H, W) map is read as N = H*W tokens (one per pixel) whose feature
vectors are the C channels. A convolution mixes a fixed neighbourhood with
weights that stay the same for every input; attention builds its mixing
weights from the input itself, for every pair of positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["self_attention", "attention_math", "check_feature_map"]


def check_feature_map(x: Tensor, channels: int | None = None, *, what: str = "input") -> None:
    """Raise a ValueError unless ``x`` is (B, C, H, W) with the expected C."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{what} must be a 4D tensor (B, C, H, W), got shape {tuple(x.shape)} ({x.dim()} dims)"
            + ("; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else "")
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{what} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")


def attention_math(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias_h: Tensor | None = None,
    bias_w: Tensor | None = None,
    *,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference attention with decomposed 2D position logits.

    Args:
        q: (B, heads, N, d) queries, already scaled.
        k: (B, heads, N, d) keys.
        v: (B, heads, N, dv) values.
        bias_h: (B, heads, N, H) row logits, or None.
        bias_w: (B, heads, N, W) column logits, or None (given with bias_h).

    Returns:
        (B, heads, N, dv), and the (B, heads, N, N) weights if asked.
        Logits and softmax are computed in the dtype of ``q`` (callers pass
        float32 for stability under autocast); the output has v's dtype.
    """
    logits = q @ k.transpose(-2, -1)
    if bias_h is not None and bias_w is not None:
        batch, heads, n, height = bias_h.shape
        width = bias_w.shape[-1]
        logits = logits.view(batch, heads, n, height, width) + bias_h[..., :, None] + bias_w[..., None, :]
        logits = logits.view(batch, heads, n, n)
    weights = logits.softmax(dim=-1)
    out = weights.to(v.dtype) @ v
    return (out, weights) if return_weights else out


def self_attention(x: Tensor, *, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Parameter-free self-attention over the H*W positions of a feature map.

    Each position's output is the average of all positions' feature vectors,
    weighted by ``softmax_j(x_i . x_j / sqrt(C))``: no learned weights, the
    input alone decides where each pixel looks.

    Args:
        x: (B, C, H, W) feature map.
        return_weights: also return the (B, N, N) attention weights, N = H*W,
            positions in row-major order.

    Returns:
        (B, C, H, W), same dtype as ``x`` (softmax in float32).
    """
    check_feature_map(x)
    batch, channels, height, width = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    with torch.autocast(device_type=x.device.type, enabled=False):
        t32 = tokens.to(torch.promote_types(tokens.dtype, torch.float32)).unsqueeze(1)
        out, weights = attention_math(t32 * channels**-0.5, t32, t32, return_weights=True)
    out = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width).to(x.dtype)
    return (out, weights.squeeze(1)) if return_weights else out
