"""Multi-head self-attention over a 2D feature map (the BoT block's core)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import check_feature_map
from .attention_paths import ATTENTION_PATHS, BACKENDS, resolve_backend
from .position import POS_EMB_TYPES, make_position

__all__ = ["MHSA2d", "set_attention_backend"]

# Paths that take q, k, v in the projection's dtype and keep logits and
# softmax in float32 inside their fused kernels.
_FUSED = ("sdpa", "flex", "fold")


class MHSA2d(nn.Module):
    """Multi-head self-attention with 2D position logits, any input size.

    As in the authors' code: q, k, v are 1x1 projections without bias (held
    as one stacked convolution, the same function as three separate ones),
    heads split channels, q is scaled by ``dim_head ** -0.5`` before both the
    content logits ``q . k`` and the position logits, there is no output
    projection. Logits and softmax run in float32 even under autocast.

    Args:
        dim: input channels C.
        heads: number of heads.
        dim_head: channels per head; the output has ``heads * dim_head``.
        pos_emb: ``"relative"`` (the paper's 2D relative logits),
            ``"absolute"`` or ``"none"``.
        ref_size: feature-map size the position tables are made for. Other
            sizes (square or not) interpolate them; this is a reference, not
            a constraint.
        backend: how attention is computed, the same function every way:
            ``"auto"`` (by device and size), ``"math"`` (the reference),
            ``"chunked"`` (memory-lean: query chunks recomputed in backward),
            ``"sdpa"`` (``F.scaled_dot_product_attention`` with a mask),
            ``"flex"`` (FlexAttention, CUDA) or ``"fold"`` (position logits
            folded into q and k: fused SDPA kernels without a mask, O(N)
            memory, CPU and CUDA). See :mod:`botnet.layers.attention_paths`.

    Shape:
        input (B, dim, H, W) -> output (B, heads * dim_head, H, W).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        dim_head: int = 128,
        pos_emb: str = "relative",
        ref_size: int | tuple[int, int] = 14,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if pos_emb not in POS_EMB_TYPES:
            raise ValueError(f"pos_emb must be one of {POS_EMB_TYPES}, got {pos_emb!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.dim = dim
        self.heads = heads
        self.dim_head = dim_head
        self.pos_emb = pos_emb
        self.scale = dim_head**-0.5
        self.qkv = nn.Conv2d(dim, 3 * heads * dim_head, kernel_size=1, bias=False)
        self.pos = make_position(pos_emb, dim_head, ref_size)
        # Variance-preserving projections (fan-in); the network's kaiming
        # fan-out init is for convolutions followed by ReLU, not for q.k.
        nn.init.normal_(self.qkv.weight, std=dim**-0.5)

    @property
    def out_channels(self) -> int:
        return self.heads * self.dim_head

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (scaled), k, v, each (B, heads, N, dim_head), in x's (autocast) dtype."""
        batch, channels, height, width = x.shape
        # The weight's rows are stored (q|k|v, head, d). Convolving with them
        # reordered to (head, q|k|v, d) lays each of q, k, v out as
        # (B, heads, d, N) with one stride over batch and heads, so batched
        # matmuls read them without copies, and backward stacks their
        # gradients straight into the convolution's layout.
        weight = self.qkv.weight.view(3, self.heads, self.dim_head, channels).transpose(0, 1)
        qkv = F.conv2d(x, weight.reshape(self.qkv.weight.shape))
        qkv = qkv.reshape(batch, self.heads, 3, self.dim_head, height * width)
        q, k, v = (t.transpose(-2, -1) for t in qkv.unbind(2))
        return q * self.scale, k, v

    def position_logits(self, q: Tensor, height: int, width: int) -> tuple[Tensor | None, Tensor | None]:
        """Decomposed position logits (B, heads, N, H) and (B, heads, N, W), or Nones."""
        if self.pos is None:
            return None, None
        return self.pos(q, height, width)

    def forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.dim, what=f"{type(self).__name__} input")
        batch, _, height, width = x.shape
        q, k, v = self.project(x)
        backend = resolve_backend(self.backend, q)
        attend = ATTENTION_PATHS[backend]
        # Logits and softmax in at least float32 (half-precision logits
        # overflow at 65504); float64 stays float64.
        logit_dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q_logit = q.to(logit_dtype)
            bias_h, bias_w = self.position_logits(q_logit, height, width)
            if backend in _FUSED:
                # Fused kernels take q, k, v in one (half) dtype and accumulate in float32.
                out = attend(q, k, v, bias_h, bias_w)
            else:
                out = attend(q_logit, k.to(logit_dtype), v, bias_h, bias_w)
        # (B, heads, N, d) -> (B, heads * d, H, W): heads concatenated on channels.
        return out.transpose(-2, -1).reshape(batch, self.out_channels, height, width)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, pos_emb={self.pos_emb!r}"
            + (f", backend={self.backend!r}" if self.backend != "auto" else "")
        )


def set_attention_backend(model: nn.Module, backend: str) -> int:
    """Set ``backend`` on every :class:`MHSA2d` in ``model``; returns how many.

    Example: ``set_attention_backend(create_model("botnet50"), "chunked")``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    layers = [m for m in model.modules() if isinstance(m, MHSA2d)]
    for layer in layers:
        layer.backend = backend
    return len(layers)
