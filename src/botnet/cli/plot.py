"""``botnet plot DIR``: loss, accuracy and learning rate over epochs, from DIR/metrics.jsonl."""

from __future__ import annotations

import argparse


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
    from ..visualize.plots import plot_run

    result = plot_run(args.run_dir, args.out)
    best = result["best"]
    scored = "" if best is None else f", best {best['name']} {100 * best['value']:.2f}% at epoch {best['epoch']}"
    print(f"{result['png']}: {result['epochs']} epochs{scored}")
    return 0
