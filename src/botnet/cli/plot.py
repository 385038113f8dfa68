"""``botnet plot DIR``: loss, accuracy and learning rate over epochs, from DIR/metrics.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="PNG of a training run's loss, accuracy and learning rate over epochs",
        description="Draw DIR/metrics.jsonl (written by `botnet train`) as one PNG with three panels.",
    )
    parser.add_argument("run_dir", metavar="DIR", help="a `botnet train` run directory (or a metrics.jsonl file)")
    parser.add_argument("-o", "--out", metavar="PNG", help="output image (default DIR/curves.png)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..plots import plot_training_curves, read_metrics

    source = Path(args.run_dir)
    records = read_metrics(source)
    run_dir = source if source.is_dir() else source.parent
    title = run_dir.name
    config = run_dir / "config.json"
    if config.is_file():
        settings = json.loads(config.read_text()).get("settings", {})
        if "backbone" in settings:
            title = f"{settings.get('arch', '?')} + {settings['backbone']} on {settings.get('data', '?')} ({run_dir.name})"
        else:
            title = f"{settings.get('model', '?')} on {settings.get('dataset', '?')} ({run_dir.name})"
    path = plot_training_curves(records, Path(args.out) if args.out else run_dir / "curves.png", title=title)
    scored = [r for r in records if r.get("val_acc", r.get("bbox_AP")) is not None]
    if scored:
        key, name = ("val_acc", "val top-1") if "val_acc" in scored[0] else ("bbox_AP", "box AP")
        best = max(scored, key=lambda r: r[key])
        print(f"{path}: {len(records)} epochs, best {name} {100 * best[key]:.2f}% at epoch {best['epoch']}")
    else:
        print(f"{path}: {len(records)} epochs")
    return 0
