"""PNG figures of training runs: learning curves and confusion matrices (matplotlib, no display)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .style import save_figure, styled

__all__ = ["read_metrics", "plot_run", "plot_training_curves", "plot_confusion_matrix"]


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (or a run directory holding one)."""
    path = Path(path)
    from ..runtime.store import committed_path

    if path.is_dir():
        path = path / "metrics.jsonl"
    if not committed_path(path).is_file():
        raise FileNotFoundError(f"no metrics file at {str(path)!r} (a `botnet train` run directory has metrics.jsonl)")
    records = []
    for number, line in enumerate(committed_path(path).read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(path)!r} line {number} is not JSON: {err}") from None
    if not records:
        raise ValueError(f"{str(path)!r} has no epochs yet")
    keys = set().union(*records)
    missing = {"epoch", "lr"} - keys
    if not missing and not ({"train_loss", "val_loss", "val_acc"} <= keys or "loss" in keys):
        missing = {"train_loss", "val_loss", "val_acc"} - keys
    if missing:
        raise ValueError(f"{str(path)!r} records lack {sorted(missing)}; is it a `botnet train` metrics file?")
    return records


def plot_run(source: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Draw a run's ``metrics.jsonl`` (:func:`plot_training_curves`), titled from its ``config.json``.

    Args:
        source: a run directory or its ``metrics.jsonl``.
        out: the PNG (default: ``curves.png`` in the run directory).

    Returns:
        ``{"png", "epochs", "best"}``: ``best`` is None without validation,
        else ``{"name", "value", "epoch"}`` (top-1, or box AP).
    """
    source = Path(source)
    records = read_metrics(source)
    run_dir = source if source.is_dir() else source.parent
    title = run_dir.name
    config = run_dir / "config.json"
    if config.is_file():
        try:
            settings = json.loads(config.read_text()).get("settings", {})
        except (OSError, ValueError):
            settings = {}
        if "backbone" in settings:
            title = f"{settings.get('arch', '?')} + {settings['backbone']} on {settings.get('data', '?')} ({run_dir.name})"
        elif settings:
            title = f"{settings.get('model', '?')} on {settings.get('dataset', '?')} ({run_dir.name})"
    png = plot_training_curves(records, Path(out) if out else run_dir / "curves.png", title=title)
    scored = [r for r in records if r.get("val_acc", r.get("bbox_AP")) is not None]
    best = None
    if scored:
        key, name = ("val_acc", "val top-1") if "val_acc" in scored[0] else ("bbox_AP", "box AP")
        top = max(scored, key=lambda r: r[key])
        best = {"name": name, "value": top[key], "epoch": top["epoch"]}
    return {"png": png, "epochs": len(records), "best": best}


def _figure(ncols: int = 1, figsize: tuple[float, float] = (6, 4)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


@styled
def plot_training_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Loss, accuracy (or COCO AP) and learning rate against epoch, side by side; returns the PNG path.

    Classification runs show train / validation loss and top-1; detection
    runs show their loss terms and box / mask AP on the epochs that were
    evaluated.
    """
    if "val_acc" not in records[0]:
        return _plot_detection_curves(records, path, title)
    fig, (ax_loss, ax_acc, ax_lr) = _figure(3, figsize=(13, 3.8))
    epochs = [r["epoch"] for r in records]

    def series(key: str) -> list[float] | None:
        values = [r.get(key) for r in records]
        return None if any(v is None for v in values) else values

    ax_loss.plot(epochs, series("train_loss"), marker="o", ms=3, label="train (with label smoothing)")
    ax_loss.plot(epochs, series("val_loss"), marker="o", ms=3, label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    if series("train_acc") is not None:
        ax_acc.plot(epochs, [100 * v for v in series("train_acc")], marker="o", ms=3, label="train")
    ax_acc.plot(epochs, [100 * v for v in series("val_acc")], marker="o", ms=3, label="validation top-1")
    if series("raw_val_acc") is not None:
        ax_acc.plot(epochs, [100 * v for v in series("raw_val_acc")], ls="--", label="validation, raw (no EMA)")
    best = max(records, key=lambda r: r["val_acc"])
    ax_acc.annotate(f"best {100 * best['val_acc']:.2f}%", (best["epoch"], 100 * best["val_acc"]),
                    textcoords="offset points", xytext=(-40, -18))
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_lr.plot(epochs, series("lr"), marker="o", ms=3, color="tab:green")
    ax_lr.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


@styled
def _plot_detection_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str) -> Path:
    fig, (ax_loss, ax_ap, ax_lr) = _figure(3, figsize=(13, 3.8))
    epochs = [r["epoch"] for r in records]
    for key in sorted({k for r in records for k in r if k == "loss" or k.startswith("loss_")}):
        ax_loss.plot(epochs, [r.get(key) for r in records], marker="o", ms=3, label=key, lw=2 if key == "loss" else 1)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in (("bbox_AP", "box AP"), ("segm_AP", "mask AP"), ("bbox_AP50", "box AP50")):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax_ap.plot(*zip(*points), marker="o", ms=3, label=label)
    ax_ap.set(xlabel="epoch", ylabel="COCO AP (validation)", title="average precision")
    ax_lr.plot(epochs, [r["lr"] for r in records], marker="o", ms=3, color="tab:green")
    ax_lr.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate")
    for ax in (ax_loss, ax_ap, ax_lr):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    if ax_ap.lines:
        ax_ap.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


@styled
def plot_confusion_matrix(
    matrix: Tensor, class_names: Sequence[str], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows: true class) with counts; returns the PNG path."""
    counts = matrix.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(class_names)
    side = max(5.0, 0.55 * n + 2)
    fig, ax = _figure(figsize=(side + 1, side))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return save_figure(fig, path, dpi=110)
