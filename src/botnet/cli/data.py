"""``botnet data pack DIR --out OUT``: an image folder as tar shards (WebDataset format) for streaming."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._options import positive_int_arg

    parser = subparsers.add_parser(
        "data",
        help="prepare datasets: pack an image folder into tar shards",
        description="Dataset tools. `botnet data pack DIR --out OUT` writes DIR/train/<class>/* (and val/) as "
        "tar shards plus OUT/index.json, read back by botnet.classification.shards.ShardDataset.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    parser.set_defaults(run=lambda args: parser.print_help() or 2)
    pack = actions.add_parser(
        "pack",
        help="ImageFolder tree -> OUT/train-000000.tar ... OUT/val-000000.tar ... and OUT/index.json",
        description="Pack ROOT/train/<class>/* and ROOT/val/<class>/* (or validation/) into tar shards: each "
        "image's original bytes (JPEG never re-encoded) and its class index, plus OUT/index.json.",
    )
    pack.add_argument("root", metavar="DIR", help="image folder root with train/ (and val/) class directories")
    pack.add_argument("--out", required=True, metavar="OUT", help="output directory (new, empty or an earlier pack)")
    pack.add_argument("--shard-size", type=positive_int_arg, default=1000, metavar="N",
                      help="images per shard (default 1000: ~110 MB of ImageNet JPEGs)")
    pack.add_argument("--seed", type=int, default=0, help="order of the training images in the shards (default 0)")
    pack.set_defaults(run=run_pack)


def run_pack(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..classification.shards import pack_folder
    from ..runtime.console import console

    index = pack_folder(args.root, args.out, shard_size=args.shard_size, seed=args.seed)
    table = Table(title=f"{args.out}: {len(index['classes'])} classes, up to {index['shard_size']} images a shard")
    for column in ("split", "shards", "images", "classes"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, entry in index["splits"].items():
        present = sum(1 for count in entry["per_class"] if count)
        table.add_row(split, str(len(entry["shards"])), str(entry["count"]), str(present))
    console().print(table)
    return 0
