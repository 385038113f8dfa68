"""``botnet attention --image PATH --out PNG``: where each head looks, as pictures."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from . import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._options import checked, device_arg, nonneg_int_arg, positive_int_arg
    from ..training.config import nonneg_float

    parser = subparsers.add_parser(
        "attention",
        help="attention maps of a BoTNet on an image, and its position logits, as PNGs",
        description="Run one image through a model and draw, for chosen query pixels, where each head of an "
        "attention layer looks (overlaid on the image), plus a second figure with the heads' relative "
        "position logits and one query's split into content and position logits.",
    )
    parser.add_argument("--image", help="image file (any format PIL reads; gray/RGBA converted)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="trained model: .safetensors, .pt or a run directory")
    source.add_argument("--model", help="registered model name, with RANDOM weights (default botnet50)")
    parser.add_argument("--seed", type=nonneg_int_arg, default=0, help="seed of the random weights with --model (default 0)")
    parser.add_argument("--layer", default="0",
                        help="attention layer: index among the model's MHSA layers or module name "
                        "(e.g. layer4.0.attn); default 0, the first (highest resolution)")
    parser.add_argument("--query", nargs="+", type=checked(nonneg_float), action="extend", metavar="X Y",
                        help="query pixel(s) as X Y pairs in the original image's pixel coordinates "
                        "(x from the left, y from the top); repeatable. Default: the centre and the "
                        "strongest feature")
    parser.add_argument("--img-size", nargs="+", type=positive_int_arg, metavar="SIZE",
                        help="model input size: H W, or one number for the shorter side (aspect kept). "
                        "Default: the checkpoint's training size, else the model's reference size as shorter side")
    parser.add_argument("--out", default="attention.png",
                        help="attention-map figure (default attention.png; .png gets a 256-colour palette, "
                        "other matplotlib formats such as .pdf or .svg are written as they are)")
    parser.add_argument("--positions-out", help="position-logit figure (default: OUT with _positions added)")
    parser.add_argument("--smooth", action="store_true", help="bilinear upsampling instead of one block per token")
    parser.add_argument("--dpi", type=positive_int_arg, default=100)
    parser.add_argument("--device", type=device_arg, default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--list-layers", action="store_true", help="list the model's attention layers and exit")
    parser.set_defaults(run=run)


def _load_model(args: argparse.Namespace):
    """(model, meta, description for titles)."""
    import torch

    from ..checkpoint import load_model
    from ..models import create_model

    if args.checkpoint:
        model, meta = load_model(args.checkpoint, map_location=args.device)
        return model, meta, f"{meta.get('model', model.name)} from {Path(args.checkpoint).name}"
    name = args.model or "botnet50"
    torch.manual_seed(args.seed)
    model = create_model(name).to(args.device).eval()
    return model, {}, f"{name} with RANDOM weights (untrained, seed {args.seed})"


def _parse_queries(values: list[float] | None) -> list[tuple[float, float]]:
    if not values:
        return []
    if len(values) % 2:
        raise CommandError(f"--query takes X Y pairs, got {len(values)} number(s): {values}")
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def _to_token(x: float, y: float, image_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Feature-map pixel (ty, tx) covering image pixel (x, y) of an image of ``image_hw``."""
    height, width = size
    return min(int(y * height / image_hw[0]), height - 1), min(int(x * width / image_hw[1]), width - 1)


def _default_queries(record, batch: int = 0) -> list[tuple[tuple[int, int], str]]:
    """The centre, and the strongest feature (largest channel norm of the layer input) elsewhere."""
    height, width = record.size
    centre = (height // 2, width // 2)
    norm = record.input_norm[batch].clone()
    norm[centre] = -math.inf
    flat = int(norm.argmax())
    return [(centre, "centre"), ((flat // width, flat % width), "strongest feature")]


def _print_layers(console, model) -> None:
    from rich.table import Table

    from ..visualize import attention_layers

    table = Table(title=f"attention layers of {getattr(model, 'name', type(model).__name__)}")
    for column in ("index", "name", "heads", "dim_head", "positions"):
        table.add_column(column)
    for index, (name, layer) in enumerate(attention_layers(model)):
        table.add_row(str(index), name, str(layer.heads), str(layer.dim_head), layer.pos_emb)
    console.print(table)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ..visualize import attention_layers, record_attention, select_attention_layers
    from ..visualize.figures import attention_figure, position_figure, position_share, save_figure
    from ..visualize.images import IMAGENET_MEAN, IMAGENET_STD, load_image, resized_size, to_model_input

    from ..training.device import resolve_device
    from ..training.rundir import check_out_file

    console = Console(width=None if Console().is_terminal else 120)
    args.device = str(resolve_device(args.device))
    if not args.list_layers:
        check_out_file(args.out)
        if args.positions_out:
            check_out_file(args.positions_out, "--positions-out")
    model, meta, source = _load_model(args)
    if args.list_layers:
        _print_layers(console, model)
        return 0
    if not args.image:
        raise CommandError("--image is required (or --list-layers)")
    if not attention_layers(model):
        raise CommandError(f"{model.name} has no attention layers; choose a BoTNet model (see `botnet info --list`)")
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    (_, layer_name, _), = select_attention_layers(model, layer)
    queries_px = _parse_queries(args.query)

    image = load_image(args.image, channels=model.in_chans)
    image_hw = image.shape[:2]
    for x, y in queries_px:
        if not (0 <= x < image_hw[1] and 0 <= y < image_hw[0]):
            raise CommandError(
                f"query (x={x:g}, y={y:g}) is outside the image, which is {image_hw[1]} px wide "
                f"and {image_hw[0]} px high"
            )
    if args.img_size:
        size = resized_size(*image_hw, args.img_size)
    elif meta.get("img_size"):
        size = tuple(meta["img_size"])
    else:
        ref = model.spec.ref_img_size
        size = resized_size(*image_hw, ref if isinstance(ref, int) else list(ref))
    if model.in_chans == 3:
        mean, std = meta.get("mean") or IMAGENET_MEAN, meta.get("std") or IMAGENET_STD
    else:
        mean, std = meta.get("mean") or (sum(IMAGENET_MEAN) / 3,), meta.get("std") or (sum(IMAGENET_STD) / 3,)
    inputs, shown = to_model_input(image, size, mean, std)
    model.check_input(inputs)

    with torch.no_grad(), record_attention(model, layers=layer) as records:
        logits = model(inputs.to(args.device))
    record = records[layer_name]

    if queries_px:
        queries = [(_to_token(x, y, image_hw, record.size), f"x={x:g}, y={y:g}") for x, y in queries_px]
    else:
        queries = _default_queries(record)
    tokens = [token for token, _ in queries]
    labels = [f"query {k + 1}: {what}" for k, (_, what) in enumerate(queries)]

    title = source
    class_names = meta.get("class_names")
    if args.checkpoint and class_names and logits.shape[-1] == len(class_names):
        probs = logits.softmax(-1)[0]
        top = int(probs.argmax())
        title += f"; predicts {class_names[top]!r} ({100 * float(probs[top]):.0f}%)"
    title += f"; input {size[1]}x{size[0]} px"

    out = Path(args.out)
    positions_out = Path(args.positions_out or out.with_name(f"{out.stem}_positions{out.suffix}"))
    for path in (out, positions_out):
        path.parent.mkdir(parents=True, exist_ok=True)
    # Drawn over the resized image the model saw; labels keep the original image coordinates.
    fig = attention_figure(shown, record, tokens, query_labels=labels, title=title, smooth=args.smooth)
    save_figure(fig, out, dpi=args.dpi)
    fig = position_figure(record, tokens[0], query_label=f"query 1 ({queries[0][1]})", title=title)
    save_figure(fig, positions_out, dpi=args.dpi)

    table = Table(title=f"{layer_name}: {record.size[0]}x{record.size[1]} tokens ({source})")
    for column in ("query", "token (x, y)", "head", "peak weight x N", "attended tokens", "position share"):
        table.add_column(column, justify="right")
    n = record.size[0] * record.size[1]
    for label, token in zip(labels, tokens):
        rows = record.weights[0, :, record.token(*token)]
        entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1)
        shares = position_share(record, token)
        for head in range(record.heads):
            table.add_row(
                label if head == 0 else "", f"({token[1]}, {token[0]})" if head == 0 else "", str(head + 1),
                f"{float(rows[head].max()) * n:.2f}", f"{math.exp(float(entropy[head])):.1f} / {n}",
                "-" if shares is None else f"{100 * shares[head]:.0f}%",
            )
        table.add_section()
    console.print(table)
    console.print(f"attended tokens = exp(entropy) of the weights; wrote {out} and {positions_out}")
    return 0
