"""2D position logits for self-attention over feature maps.

Both encodings are *decomposed*: the position logit of query ``i`` for key ``j``
is a row term plus a column term,

    relative:  q_i . r_h[y_j - y_i + H - 1]  +  q_i . r_w[x_j - x_i + W - 1]
    absolute:  q_i . R_h[y_j]                +  q_i . R_w[x_j]

so a module returns the two terms separately, shaped (B, heads, N, H) and
(B, heads, N, W), and the full (N, N) bias is their broadcast sum. This keeps
memory at O(N * (H + W)) and lets every attention path (plain matmul, SDPA
with an additive mask, fused kernels, query chunks) consume the same tensors.

The tables are created for a reference feature-map size and linearly
interpolated to the size of each input (as SAM / ViTDet do for decomposed
relative positions), so no input size is fixed in advance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["resize_table", "RelativePosition2d", "AbsolutePosition2d", "make_position", "POS_EMB_TYPES"]

POS_EMB_TYPES = ("relative", "absolute", "none")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_table(table: Tensor, length: int) -> Tensor:
    """Linearly interpolate a (L, d) embedding table to (length, d).

    ``align_corners=False`` keeps the centre row of an odd-length table (the
    zero offset of a relative table) exactly where it was for every target
    length, including length 1; resizing to the same length returns the same
    values exactly.
    """
    if table.dim() != 2:
        raise ValueError(f"expected a (length, dim) table, got shape {tuple(table.shape)}")
    if length < 1:
        raise ValueError(f"table length must be >= 1, got {length}")
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear", align_corners=False)
    return resized.squeeze(0).t()


class RelativePosition2d(nn.Module):
    """The paper's 2D relative position logits (authors' formulation).

    Args:
        dim_head: channels per head ``d``.
        ref_size: feature-map size (H, W) the tables are made for; any other
            size is served by interpolating them.

    Parameters ``rel_h`` (2H-1, d) and ``rel_w`` (2W-1, d), shared by all heads,
    indexed by key-minus-query offset plus H-1 (resp. W-1).
    """

    def __init__(self, dim_head: int, ref_size: int | tuple[int, int] = 14) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.ref_size = _pair(ref_size)
        ref_h, ref_w = self.ref_size
        std = dim_head**-0.5
        self.rel_h = nn.Parameter(torch.randn(2 * ref_h - 1, dim_head) * std)
        self.rel_w = nn.Parameter(torch.randn(2 * ref_w - 1, dim_head) * std)

    def tables(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The tables for an (height, width) map: (2H-1, d) and (2W-1, d)."""
        # Always resized (the identity, bit for bit, at the reference size):
        # no Python test on the size, so traced and exported graphs stay
        # correct at every input size, not only at the one they saw.
        return resize_table(self.rel_h, 2 * height - 1), resize_table(self.rel_w, 2 * width - 1)

    def forward(self, q: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Row and column logits of scaled queries.

        Args:
            q: (B, heads, N, d) scaled queries, N = height * width, row-major.

        Returns:
            bias_h: (B, heads, N, H), ``bias_h[..., i, y_j]``.
            bias_w: (B, heads, N, W), ``bias_w[..., i, x_j]``.
        """
        rel_h, rel_w = self.tables(height, width)
        # One matmul against both tables scores every offset: (B, heads, N,
        # 2H-1 + 2W-1). Each query then picks its keys' offsets, y_j - y_i + H - 1
        # among the rows and x_j - x_i + W - 1 among the columns (which sit
        # after the 2H-1 row offsets). Cheaper than contracting q with
        # per-query gathered (H, H, d) tables, which needs permuted copies of q.
        scores = q @ torch.cat([rel_h, rel_w]).to(q.dtype).t()
        ys = torch.arange(height, device=q.device)
        xs = torch.arange(width, device=q.device)
        rows = ys[None, :] - ys[:, None] + height - 1  # (query y, key y)
        cols = xs[None, :] - xs[:, None] + width - 1 + 2 * height - 1  # (query x, key x)
        index = torch.cat(
            [rows[:, None, :].expand(height, width, height), cols[None, :, :].expand(height, width, width)], dim=-1
        ).reshape(height * width, height + width)
        bias = scores.gather(-1, index.expand(*q.shape[:-2], -1, -1))
        return bias[..., :height], bias[..., height:]

    def extra_repr(self) -> str:
        return f"dim_head={self.dim_head}, ref_size={self.ref_size}"


class AbsolutePosition2d(nn.Module):
    """Absolute 2D position logits ``q_i . (R_h[y_j] + R_w[x_j])``.

    Parameters ``abs_h`` (H, d) and ``abs_w`` (W, d) for the reference size,
    interpolated for other sizes.
    """

    def __init__(self, dim_head: int, ref_size: int | tuple[int, int] = 14) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.ref_size = _pair(ref_size)
        ref_h, ref_w = self.ref_size
        std = dim_head**-0.5
        self.abs_h = nn.Parameter(torch.randn(ref_h, dim_head) * std)
        self.abs_w = nn.Parameter(torch.randn(ref_w, dim_head) * std)

    def tables(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The tables for an (height, width) map: (H, d) and (W, d)."""
        # Always resized, as in RelativePosition2d.tables.
        return resize_table(self.abs_h, height), resize_table(self.abs_w, width)

    def forward(self, q: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Same contract as :meth:`RelativePosition2d.forward`."""
        abs_h, abs_w = self.tables(height, width)
        return q @ abs_h.to(q.dtype).t(), q @ abs_w.to(q.dtype).t()

    def extra_repr(self) -> str:
        return f"dim_head={self.dim_head}, ref_size={self.ref_size}"


def make_position(pos_emb: str, dim_head: int, ref_size: int | tuple[int, int]) -> nn.Module | None:
    """Build the position module named by ``pos_emb`` (None for ``"none"``)."""
    if pos_emb == "relative":
        return RelativePosition2d(dim_head, ref_size)
    if pos_emb == "absolute":
        return AbsolutePosition2d(dim_head, ref_size)
    if pos_emb == "none":
        return None
    raise ValueError(f"pos_emb must be one of {POS_EMB_TYPES}, got {pos_emb!r}")
