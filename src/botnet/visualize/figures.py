"""Matplotlib figures of recorded attention (see :mod:`botnet.visualize.record`).

Two pictures answer "for this pixel, where does each head look, and how much
is content versus position?":

* :func:`attention_figure`: the photo with the query points, and for each
  query and head the attention weights upsampled to the image and overlaid;
* :func:`position_figure`: per head, the relative position logits of the mean
  query as a (2H-1) x (2W-1) image over key-minus-query offsets, then, for one
  query, its content logits, position logits and attention weights side by
  side on the same feature-map grid.

Figures are built with :class:`matplotlib.figure.Figure` in the package's
style (:mod:`~botnet.visualize.style`: no pyplot state, no GUI backend); save
them with :func:`~botnet.visualize.style.save_figure` (small PNGs) or
``fig.savefig``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .queries import position_share
from .record import AttentionRecord
from .style import styled

__all__ = ["attention_figure", "position_figure"]

PANEL_INCHES = 2.4


def _panel_size(height: int, width: int) -> tuple[float, float]:
    """(width, height) in inches of a panel showing an image of that aspect ratio."""
    aspect = height / width
    if aspect <= 1:
        return PANEL_INCHES, PANEL_INCHES * max(aspect, 0.35)
    return PANEL_INCHES / min(aspect, 2.5), PANEL_INCHES


def _token_centre(record: AttentionRecord, token: tuple[int, int], image_hw: tuple[int, int]) -> tuple[float, float]:
    """(x, y) image coordinates of the centre of feature-map pixel ``token`` = (y, x)."""
    height, width = record.size
    return (token[1] + 0.5) * image_hw[1] / width, (token[0] + 0.5) * image_hw[0] / height


def _mark(ax, x: float, y: float, label: str | None = None, size: float = 9) -> None:
    ax.plot([x], [y], marker="o", markersize=size, markerfacecolor="white", markeredgecolor="black",
            markeredgewidth=1.5)
    if label:
        ax.annotate(
            label, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9, fontweight="bold", color="white",
            bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.6, linewidth=0),
        )


@styled
def attention_figure(
    image: np.ndarray,
    record: AttentionRecord,
    queries: Sequence[tuple[int, int]],
    *,
    query_labels: Sequence[str] | None = None,
    title: str | None = None,
    batch: int = 0,
    smooth: bool = False,
) -> Figure:
    """Photo with query points, then one overlay per head for each query.

    Args:
        image: (h, w, 1 or 3) image in [0, 1] as fed to the model (before
            normalisation); the attention grid is stretched over it.
        record: the layer's record.
        queries: feature-map pixels (y, x) to show, one row each.
        query_labels: row labels (default ``"query k (x, y)"`` in tokens).
        title: figure title.
        smooth: bilinear upsampling of the maps instead of one block per token.

    Colour is the attention weight times N (1 = uniform attention over the
    N = H * W tokens), on one scale for the whole figure that spans the
    smallest to the largest weight shown (not from 0).
    """
    if not queries:
        raise ValueError("attention_figure needs at least one query point")
    height, width = record.size
    n = height * width
    image_hw = image.shape[:2]
    labels = list(query_labels or (f"query {k + 1} (x={x}, y={y})" for k, (y, x) in enumerate(queries)))
    maps = [record.query_map(y, x)[batch].cpu().numpy() * n for y, x in queries]  # each (heads, H, W)
    # One scale for the figure, from the smallest to the largest shown weight:
    # near-uniform maps (an untrained model) still show their structure, and
    # the colour bar tells how small the range is.
    vmin, vmax = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    gray = image.mean(axis=-1)
    extent = (0, image_hw[1], image_hw[0], 0)
    interp_image = "nearest" if max(image_hw) < 128 else "antialiased"
    interp_map = "bilinear" if smooth else "nearest"

    panel_w, panel_h = _panel_size(*image_hw)
    cols = 1 + record.heads
    fig = Figure(figsize=(cols * panel_w + 1.0, len(queries) * (panel_h + 0.45) + 0.7), layout="constrained")
    axes = fig.subplots(len(queries), cols, squeeze=False)
    mappable = None
    for row, ((y, x), label, head_maps) in enumerate(zip(queries, labels, maps)):
        shares = position_share(record, (y, x), batch)
        ax = axes[row, 0]
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                  extent=extent, interpolation=interp_image)
        for k, other in enumerate(queries):
            if k != row:
                ox, oy = _token_centre(record, other, image_hw)
                _mark(ax, ox, oy, size=5)
        qx, qy = _token_centre(record, (y, x), image_hw)
        _mark(ax, qx, qy, str(row + 1))
        ax.set_title(label, fontsize=9)
        for head in range(record.heads):
            ax = axes[row, 1 + head]
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation=interp_image)
            mappable = ax.imshow(head_maps[head], cmap="inferno", vmin=vmin, vmax=vmax, alpha=0.7, extent=extent,
                                 interpolation=interp_map)
            _mark(ax, qx, qy, size=6)
            head_title = f"head {head + 1}: peak {head_maps[head].max():.3g}x"
            if shares is not None:
                head_title += f", pos {100 * shares[head]:.0f}%"
            ax.set_title(head_title, fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    cbar = fig.colorbar(mappable, ax=axes[:, 1:], shrink=0.9, aspect=30 * max(1, len(queries)) ** 0.5)
    cbar.set_label("attention weight x N  (1 = uniform)", fontsize=9)
    fig.suptitle(
        (title + "\n" if title else "")
        + f"{record.name}: {height}x{width} tokens. Peak: largest weight x N. "
        + ("pos: share of the logits' spread due to position." if record.position_logits is not None else ""),
        fontsize=10,
    )
    return fig


def _centred(values: np.ndarray) -> np.ndarray:
    """Subtract the mean over the last two axes: softmax ignores constant shifts."""
    return values - values.mean(axis=(-2, -1), keepdims=True)


@styled
def position_figure(
    record: AttentionRecord,
    query: tuple[int, int] | None = None,
    *,
    query_label: str | None = None,
    title: str | None = None,
    batch: int = 0,
) -> Figure:
    """Position logits per head, and one query's content / position / attention split.

    Rows (one column per head):

    1. relative: the position logits of the mean query as a (2H-1) x (2W-1)
       image over offsets (dx, dy) = key minus query, centre = the query
       itself; absolute: the (H, W) logits over key positions. Logits are
       linear in q, so this is also the average over all queries of each
       query's position logits: the query-independent part of a head's
       positional preference. Omitted for ``pos_emb="none"``.
    2. for ``query`` (y, x) (default: the centre): content logits ``q . k``,
    3. its position logits, both with their mean over keys removed and on one
       shared colour scale, so their contrast shows which term decides;
    4. its attention weights x N.
    """
    height, width = record.size
    if query is None:
        query = (height // 2, width // 2)
    label = query_label or f"query (x={query[1]}, y={query[0]})"
    n = height * width
    rows: list[tuple[str, np.ndarray, str, str]] = []  # (row label, (heads, h, w) values, kind, colour label)
    table = record.position_table_logits
    if table is not None:
        if record.pos_emb == "relative":
            what = "relative position logits\nof the mean query\nx: dx, y: dy (key - query)"
        else:
            what = "absolute position logits\nof the mean query\n(over key positions)"
        rows.append((what, _centred(table[batch].cpu().numpy()), "table", "logit (mean removed)"))
    content = _centred(record.query_map(*query, which="content_logits")[batch].cpu().numpy())
    rows.append((f"{label}:\ncontent logits q.k", content, "logits", "logit (mean over keys removed)"))
    if record.position_logits is not None:
        position = _centred(record.query_map(*query, which="position_logits")[batch].cpu().numpy())
        rows.append((f"{label}:\nposition logits", position, "logits", "logit (mean over keys removed)"))
    weights = record.query_map(*query)[batch].cpu().numpy() * n
    rows.append((f"{label}:\nattention weights", weights, "weights", "weight x N (1 = uniform)"))

    logit_rows = [row for row, (_, _, kind, _) in enumerate(rows) if kind == "logits"]
    logit_limit = max(float(np.abs(rows[row][1]).max()) for row in logit_rows)
    panel_w, panel_h = _panel_size(height, width)
    fig = Figure(figsize=(record.heads * panel_w + 2.6, len(rows) * (panel_h + 0.4) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), record.heads, squeeze=False)
    for row, (row_label, values, kind, colour_label) in enumerate(rows):
        for head in range(record.heads):
            ax = axes[row, head]
            if kind == "table":
                limit = float(np.abs(values).max())  # one scale for all heads
                th, tw = values.shape[-2:]
                if record.pos_emb == "relative":
                    extent = (-(tw // 2) - 0.5, tw // 2 + 0.5, th // 2 + 0.5, -(th // 2) - 0.5)
                    centre = (0.0, 0.0)
                else:
                    extent = (-0.5, tw - 0.5, th - 0.5, -0.5)
                    centre = None
                image = ax.imshow(values[head], cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent,
                                  interpolation="nearest")
                if centre is not None:
                    ax.plot(*centre, marker="+", markersize=10, color="black", markeredgewidth=1.5)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
                ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
                ax.tick_params(labelsize=7)
            else:
                if kind == "logits":
                    image = ax.imshow(values[head], cmap="RdBu_r", vmin=-logit_limit, vmax=logit_limit,
                                      interpolation="nearest")
                else:
                    image = ax.imshow(values[head], cmap="inferno", vmin=float(values.min()), vmax=float(values.max()),
                                      interpolation="nearest")
                ax.plot(query[1], query[0], marker="o", markersize=7, markerfacecolor="white",
                        markeredgecolor="black", markeredgewidth=1.5)
                ax.set_xticks([])
                ax.set_yticks([])
            if row == 0:
                ax.set_title(f"head {head + 1}", fontsize=10)
            if head == 0:
                ax.set_ylabel(row_label, fontsize=8)
        # One colour bar per row; content and position logits share theirs.
        if kind != "logits" or row == logit_rows[-1]:
            cbar = fig.colorbar(image, ax=axes[logit_rows, :] if kind == "logits" else axes[row, :], shrink=0.9)
            cbar.set_label(colour_label, fontsize=8)
            cbar.ax.tick_params(labelsize=7)
    fig.suptitle(
        (title + "\n" if title else "") + f"{record.name}: {height}x{width} tokens, {record.pos_emb} positions",
        fontsize=10,
    )
    return fig
