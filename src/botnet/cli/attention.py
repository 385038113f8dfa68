"""``botnet attention --image PATH --out PNG``: where each head looks, as pictures."""

from __future__ import annotations

import argparse
from typing import Any

from . import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._options import checked, device_arg, nonneg_int_arg, positive_int_arg
    from ..runtime.checks import nonneg_float

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


def _queries(values: list[float] | None) -> list[tuple[float, float]]:
    if not values:
        return []
    if len(values) % 2:
        raise CommandError(f"--query takes X Y pairs, got {len(values)} number(s): {values}")
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def _print_layers(console: Any, model: Any) -> None:
    from rich.table import Table

    from ..visualize import attention_layers

    table = Table(title=f"attention layers of {getattr(model, 'name', type(model).__name__)}")
    for column in ("index", "name", "heads", "dim_head", "positions"):
        table.add_column(column)
    for index, (name, layer) in enumerate(attention_layers(model)):
        table.add_row(str(index), name, str(layer.heads), str(layer.dim_head), layer.pos_emb)
    console.print(table)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..runtime.device import resolve_device
    from ..visualize.report import attention_report, inspected_model

    console = Console(width=None if Console().is_terminal else 120)
    device = resolve_device(args.device)
    if args.list_layers:
        model, _, _ = inspected_model(args.checkpoint, args.model, args.seed, device)
        _print_layers(console, model)
        return 0
    if not args.image:
        raise CommandError("--image is required (or --list-layers)")
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    report = attention_report(
        args.image, args.out, checkpoint=args.checkpoint, model=args.model, seed=args.seed, layer=layer,
        queries=_queries(args.query), img_size=args.img_size, positions_out=args.positions_out,
        smooth=args.smooth, dpi=args.dpi, device=device,
    )

    height, width = report.size
    table = Table(title=f"{report.layer}: {height}x{width} tokens ({report.source})")
    for column in ("query", "token (x, y)", "head", "peak weight x N", "attended tokens", "position share"):
        table.add_column(column, justify="right")
    for query in report.queries:
        for stats in query.heads:
            first = stats.head == 1
            table.add_row(
                query.label if first else "", f"({query.token[1]}, {query.token[0]})" if first else "",
                str(stats.head), f"{stats.peak:.2f}", f"{stats.attended:.1f} / {height * width}",
                "-" if stats.position_share is None else f"{100 * stats.position_share:.0f}%",
            )
        table.add_section()
    console.print(table)
    console.print(f"attended tokens = exp(entropy) of the weights; wrote {report.figure} and {report.positions_figure}")
    return 0
