"""``botnet train``: train a BoTNet (or ResNet) classifier on digits, Fashion-MNIST or an image folder.

Also runs under ``torchrun --nproc_per_node N -m botnet train ...`` (DDP).
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..classification.train import TrainConfig
    from ._options import add_config_options

    d = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help=f"train a classifier (default: {d.model} on the built-in digits, CPU, under a minute)",
        description=f"Train a BoTNet classifier. With no options: {d.model} on scikit-learn's digits (8x8 upsampled "
        f"to 32 px, fixed stratified 80/20 split), {d.epochs} epochs on the CPU. Writes OUT/config.json, "
        "OUT/metrics.jsonl, OUT/{last,best}.pt and OUT/{last,best}.safetensors (one consistent set per epoch, "
        "see OUT/manifest.json). Settings come from the defaults, then -c FILE, then the options given. Under "
        "torchrun it uses DistributedDataParallel (nccl on GPU, gloo on CPU); --batch-size is per process.",
    )
    add_config_options(parser, TrainConfig)
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..classification.train import TrainConfig, train
    from ._options import config_overrides

    summary = train(resume=args.resume, **config_overrides(args, TrainConfig))
    if args.json:
        print(json.dumps(summary))
    return 0
