"""Which query tokens to look at, and what each head does for them, as numbers.

A query is a feature-map pixel ``(y, x)`` of a recorded layer
(:class:`~botnet.visualize.record.AttentionRecord`). :func:`token_at` maps an
image pixel to it, :func:`default_queries` picks the two a first look wants
(the centre, and the strongest feature elsewhere), and :func:`head_statistics`
says, per head, how peaked its attention is and how much of it comes from
position rather than content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .record import AttentionRecord

__all__ = ["HeadStatistics", "default_queries", "head_statistics", "position_share", "token_at"]


def token_at(x: float, y: float, image_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Feature-map pixel ``(ty, tx)`` covering image pixel ``(x, y)`` of an image of ``image_hw`` = (H, W)."""
    height, width = size
    return min(int(y * height / image_hw[0]), height - 1), min(int(x * width / image_hw[1]), width - 1)


def default_queries(record: AttentionRecord, batch: int = 0) -> list[tuple[tuple[int, int], str]]:
    """The centre, and the strongest feature (largest channel norm of the layer input) elsewhere, with labels."""
    height, width = record.size
    centre = (height // 2, width // 2)
    norm = record.input_norm[batch].clone()
    norm[centre] = -math.inf
    flat = int(norm.argmax())
    return [(centre, "centre"), ((flat // width, flat % width), "strongest feature")]


def position_share(record: AttentionRecord, token: tuple[int, int], batch: int = 0) -> np.ndarray | None:
    """Per head, the fraction of the logits' spread over keys that comes from position.

    ``std_j(position) / (std_j(content) + std_j(position))`` for the query at
    ``token``: 0 means the query's logits vary only with content, 1 only with
    position. None for layers without position logits. Shape (heads,).
    """
    if record.position_logits is None:
        return None
    i = record.token(*token)
    content = record.content_logits[batch, :, i].std(dim=-1)
    position = record.position_logits[batch, :, i].std(dim=-1)
    return (position / (content + position).clamp_min(1e-12)).cpu().numpy()


@dataclass(frozen=True)
class HeadStatistics:
    """One head's attention for one query.

    Attributes:
        head: 1-based head number.
        peak: the largest weight times N (1: uniform attention; N: all on one key).
        attended: exp(entropy) of the weights, the number of keys attended
            to "effectively" (N: uniform; 1: one key).
        position_share: the share of the logits' spread over keys that comes
            from position (None without position logits).
    """

    head: int
    peak: float
    attended: float
    position_share: float | None


def head_statistics(record: AttentionRecord, token: tuple[int, int], batch: int = 0) -> list[HeadStatistics]:
    """Per head, :class:`HeadStatistics` of query ``token`` = (y, x)."""
    tokens = record.size[0] * record.size[1]
    rows = record.weights[batch, :, record.token(*token)]
    entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1)
    shares = position_share(record, token, batch)
    return [
        HeadStatistics(head + 1, float(rows[head].max()) * tokens, math.exp(float(entropy[head])),
                       None if shares is None else float(shares[head]))
        for head in range(record.heads)
    ]
