"""One look for every figure the package draws, and one way to write it.

Attention maps (:mod:`~botnet.visualize.figures`), learning curves and
confusion matrices (:mod:`~botnet.visualize.plots`) are built inside
:func:`styled` (the same font sizes, grid and colour cycle) as plain
:class:`matplotlib.figure.Figure` objects: no pyplot state, no GUI backend,
nothing to close. :func:`save_figure` writes them; a PNG gets an adaptive
256-colour palette.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from matplotlib import rc_context
from matplotlib.figure import Figure

__all__ = ["STYLE", "save_figure", "styled"]

#: matplotlib rc settings every figure of the package is drawn with.
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": False,  # curves ask for it; images must not get it
    "grid.alpha": 0.3,
    "lines.markersize": 3,
    "image.interpolation": "nearest",
    "figure.constrained_layout.use": True,
}

F = TypeVar("F", bound=Callable[..., Any])


def styled(build: F) -> F:
    """Decorate a figure-building function: everything it draws uses :data:`STYLE`."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with rc_context(STYLE):
            return build(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Save a figure (creating its folder); a ``.png`` gets an adaptive 256-colour palette. Returns the path.

    Photo overlays make full-colour PNGs large (~0.5 MB); the palette version
    is 3-4x smaller and looks the same (colour maps, curves and a gray photo
    need few colours; no dithering, so colour bars stay smooth). Other
    formats (.pdf, .svg, ...) are written by matplotlib as they are.
    """
    from PIL import Image

    from ..runtime.store import atomic_write

    path = Path(path)
    # Through the store: a full disk is one line naming the file, and never a half-written picture.
    if path.suffix.lower() != ".png":
        kind = path.suffix[1:].lower() or None
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=kind))
        return path
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
    return path
