"""Where each head of a model looks on one image: the figures and numbers of ``botnet attention``.

:func:`attention_report` is the whole job in one call: take a model (a
trained checkpoint, or a registered model with seeded random weights:
:func:`inspected_model`), feed it the image exactly as ``botnet predict``
would (:func:`botnet.preprocess.preprocessing_from_meta`), record one
attention layer (:func:`~botnet.visualize.record.record_attention`), pick the
queries (:mod:`~botnet.visualize.queries`), draw the attention maps and the
position logits (:mod:`~botnet.visualize.figures`) and return, per query and
head, how peaked the attention is and how much of it is position.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..images import read_image
from ..models.network import BoTNet
from ..preprocess import preprocessing_from_meta, resized_size
from ..runtime.checks import check_out_file
from .queries import HeadStatistics, default_queries, head_statistics, token_at
from .record import attention_layers, record_attention, select_attention_layers

__all__ = ["AttentionReport", "QueryReport", "attention_report", "inspected_model"]

PathLike = str | os.PathLike[str]


def inspected_model(checkpoint: PathLike | None = None, name: str | None = None, seed: int = 0,
                    device: str | torch.device = "cpu") -> tuple[BoTNet, dict[str, Any], str]:
    """A model to look into: a saved classifier, or registered model ``name`` with random weights.

    The random weights are drawn from ``seed`` (in a forked RNG: the
    caller's random state is left as it was), so a picture of an untrained
    model is reproducible.

    Returns:
        (model in eval mode, its description (empty for random weights),
        a phrase saying where the weights came from).
    """
    from ..checkpoint import load_model
    from ..models.registry import create_model

    if checkpoint is not None:
        model, meta = load_model(checkpoint, map_location=device)
        return model, meta, f"{meta.get('model', model.name)} from {Path(checkpoint).name}"
    name = name or "botnet50"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name)
    return model.to(device).eval(), {}, f"{name} with RANDOM weights (untrained, seed {seed})"


@dataclass
class QueryReport:
    """One query: its label, its token (y, x) on the layer's feature map, and each head's statistics."""

    label: str
    token: tuple[int, int]
    heads: list[HeadStatistics]


@dataclass
class AttentionReport:
    """What :func:`attention_report` drew and measured.

    Attributes:
        layer: the recorded layer's name (e.g. ``"layer4.0.attn"``).
        size: its feature-map size (H, W) in tokens.
        input_size: the model input's (H, W) in pixels.
        source: where the weights came from.
        queries: per query, the heads' statistics.
        figure, positions_figure: the files written.
    """

    layer: str
    size: tuple[int, int]
    input_size: tuple[int, int]
    source: str
    queries: list[QueryReport]
    figure: Path
    positions_figure: Path


def attention_report(
    image: PathLike,
    out: PathLike = "attention.png",
    *,
    checkpoint: PathLike | None = None,
    model: str | None = None,
    seed: int = 0,
    layer: int | str = 0,
    queries: Sequence[tuple[float, float]] = (),
    img_size: int | Sequence[int] | None = None,
    positions_out: PathLike | None = None,
    smooth: bool = False,
    dpi: int = 100,
    device: str | torch.device = "cpu",
) -> AttentionReport:
    """Draw where each head of one attention layer looks on ``image``, for a few query pixels.

    Args:
        image: an image file (the package's one reader: any Pillow mode,
            EXIF orientation, alpha on white).
        out: the attention-map figure (a ``.png`` gets a 256-colour palette).
        checkpoint, model, seed: the weights (see :func:`inspected_model`).
        layer: index among the model's attention layers, or a module name.
        queries: (x, y) pixels of the original image; default: the centre
            and the strongest feature.
        img_size: model input size, (H, W) or one number for the shorter
            side (aspect kept); default: the checkpoint's training size, else
            the model's reference size as the shorter side.
        positions_out: the position-logit figure (default: ``out`` with
            ``_positions`` added).

    Returns:
        :class:`AttentionReport`.

    Raises:
        ValueError, FileNotFoundError: one line (an unwritable output, a
            model without attention, a layer out of range, a query outside
            the image, an image too small for the model, an unreadable file).
    """
    from .figures import attention_figure, position_figure
    from .style import save_figure

    out = check_out_file(out)
    positions_out = Path(positions_out) if positions_out else out.with_name(f"{out.stem}_positions{out.suffix}")
    check_out_file(positions_out, "--positions-out")
    net, meta, source = inspected_model(checkpoint, model, seed, device)
    if not attention_layers(net):
        raise ValueError(f"{net.name} has no attention layers; choose a BoTNet model (see `botnet info --list`)")
    (_, layer_name, _), = select_attention_layers(net, layer)

    pixels = read_image(image, net.in_chans)  # uint8 (C, H, W)
    image_hw = (int(pixels.shape[1]), int(pixels.shape[2]))
    for x, y in queries:
        if not (0 <= x < image_hw[1] and 0 <= y < image_hw[0]):
            raise ValueError(f"query (x={x:g}, y={y:g}) is outside the image, which is {image_hw[1]} px wide "
                             f"and {image_hw[0]} px high")
    prep = preprocessing_from_meta(net, meta)
    if img_size is not None:
        prep = prep.with_size(resized_size(*image_hw, img_size))
    elif not meta.get("img_size"):  # a square reference size is the shorter side: the photo keeps its aspect
        ref_h, ref_w = net.spec.ref_img_size
        prep = prep.with_size(resized_size(*image_hw, [ref_h] if ref_h == ref_w else [ref_h, ref_w]))
    resized = prep.resize(pixels)
    inputs = prep.normalize(resized)[None]
    net.check_input(inputs)

    with torch.no_grad(), record_attention(net, layers=layer) as records:
        logits = net(inputs.to(device))
    record = records[layer_name]

    if queries:
        chosen = [(token_at(x, y, image_hw, record.size), f"x={x:g}, y={y:g}") for x, y in queries]
    else:
        chosen = default_queries(record)
    tokens = [token for token, _ in chosen]
    labels = [f"query {k + 1}: {what}" for k, (_, what) in enumerate(chosen)]

    title = source
    class_names = meta.get("class_names")
    if checkpoint is not None and class_names and logits.shape[-1] == len(class_names):
        probs = logits.softmax(-1)[0]
        top = int(probs.argmax())
        title += f"; predicts {class_names[top]!r} ({100 * float(probs[top]):.0f}%)"
    title += f"; input {prep.img_size[1]}x{prep.img_size[0]} px"

    # Drawn over the resized image the model saw; labels keep the original image coordinates.
    shown = resized.permute(1, 2, 0).float().div(255).numpy()
    save_figure(attention_figure(shown, record, tokens, query_labels=labels, title=title, smooth=smooth), out, dpi)
    save_figure(position_figure(record, tokens[0], query_label=f"query 1 ({chosen[0][1]})", title=title),
                positions_out, dpi)
    reports = [QueryReport(label, token, head_statistics(record, token)) for label, token in zip(labels, tokens)]
    return AttentionReport(layer_name, record.size, prep.img_size, source, reports, out, positions_out)
