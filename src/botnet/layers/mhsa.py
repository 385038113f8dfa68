"""Multi-head self-attention over a 2D feature map (the BoT block's core)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import attention_math, check_feature_map
from .position import POS_EMB_TYPES, make_position

__all__ = ["MHSA2d"]


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
    ) -> None:
        super().__init__()
        if pos_emb not in POS_EMB_TYPES:
            raise ValueError(f"pos_emb must be one of {POS_EMB_TYPES}, got {pos_emb!r}")
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
        batch, _, height, width = x.shape
        qkv = self.qkv(x).reshape(batch, 3, self.heads, self.dim_head, height * width)
        q, k, v = qkv.transpose(-2, -1).unbind(1)
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
        # Logits and softmax in at least float32 (half-precision logits
        # overflow at 65504); float64 stays float64.
        logit_dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = q.to(logit_dtype)
            bias_h, bias_w = self.position_logits(q, height, width)
            out = attention_math(q, k.to(logit_dtype), v, bias_h, bias_w)
        # (B, heads, N, d) -> (B, heads * d, H, W): heads concatenated on channels.
        return out.transpose(-2, -1).reshape(batch, self.out_channels, height, width)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, pos_emb={self.pos_emb!r}"
