"""``botnet info MODEL``: per-stage table next to resnet50."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._options import nonneg_int_arg, positive_int_arg

    parser = subparsers.add_parser(
        "info",
        help="per-stage shapes, parameters, FLOPs and attention sizes of a model, next to resnet50",
        description="Per-stage output shape, parameters, FLOPs and attention positions, "
        "side by side with a reference model (resnet50 by default).",
    )
    parser.add_argument("model", help="model name (see `botnet info --list`)", nargs="?")
    parser.add_argument("--img-size", nargs=2, type=positive_int_arg, metavar=("H", "W"),
                        help="input size (default 224 224)")
    parser.add_argument("--num-classes", type=nonneg_int_arg, default=1000, help="classifier outputs (0: none)")
    parser.add_argument("--in-chans", type=positive_int_arg, default=3)
    parser.add_argument("--compare", default="resnet50", help="reference model shown beside it ('none' to hide)")
    parser.add_argument("--list", action="store_true", help="list the registered models and exit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _fmt_positions(positions: list[int]) -> str:
    if not positions:
        return "-"
    return " / ".join(str(p) for p in dict.fromkeys(positions))  # distinct, in order


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..models import create_model, get_model_spec, list_models
    from ..models.summary import summarize

    # Piped output has no terminal width; keep the side-by-side table legible.
    console = Console(width=None if Console().is_terminal else 140)
    if args.list or not args.model:
        table = Table(title="botnet models")
        table.add_column("name")
        table.add_column("description")
        for name in list_models():
            table.add_row(name, get_model_spec(name).description)
        console.print(table)
        return 0

    img_size = tuple(args.img_size) if args.img_size else (224, 224)
    names = [args.model] + ([args.compare] if args.compare and args.compare not in ("none", args.model) else [])
    results = {}
    for name in names:
        model = create_model(name, num_classes=args.num_classes, in_chans=args.in_chans)
        results[name] = summarize(model, img_size)

    if args.json:
        payload = {
            name: {
                "img_size": list(img_size),
                "total_params": sum(r.params for r in rows),
                "total_flops": sum(r.flops for r in rows),
                "stages": [vars(r) for r in rows],
            }
            for name, rows in results.items()
        }
        print(json.dumps(payload, indent=2))
        return 0

    table = Table(title=f"{' vs '.join(names)} at {img_size[0]}x{img_size[1]} (FLOPs: 2 per multiply-add)")
    table.add_column("stage", style="bold")
    # The attention column only for models that attend somewhere.
    with_attention = {name: any(r.attention_positions for r in rows) for name, rows in results.items()}
    for name in names:
        table.add_column(f"{name}\noutput C x H x W", justify="right")
        table.add_column("params", justify="right")
        table.add_column("GFLOPs", justify="right")
        if with_attention[name]:
            table.add_column("attention\npositions/head", justify="right")
    stage_names = [r.name for r in results[names[0]]]
    for i, stage in enumerate(stage_names):
        cells = [stage]
        for name in names:
            row = results[name][i]
            cells += ["x".join(map(str, row.out_shape[1:])), _fmt_count(row.params), f"{row.flops / 1e9:.3f}"]
            if with_attention[name]:
                cells.append(_fmt_positions(row.attention_positions))
        table.add_row(*cells)
    totals = ["total"]
    for name in names:
        rows = results[name]
        params = sum(r.params for r in rows)
        totals += ["", f"{_fmt_count(params)} ({params:,})", f"{sum(r.flops for r in rows) / 1e9:.2f}"]
        if with_attention[name]:
            totals.append("")
    table.add_section()
    table.add_row(*totals, style="bold")
    console.print(table)
    return 0
