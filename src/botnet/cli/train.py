"""``botnet train``: train a BoTNet (or ResNet) on digits, Fashion-MNIST or an image folder.

Also runs under ``torchrun --nproc_per_node N -m botnet train ...`` (DDP).
"""

from __future__ import annotations

import argparse
import json

def register(subparsers: argparse._SubParsersAction) -> None:
    from ..data import DATASETS
    from ..optim import OPTIMIZERS
    from ..train import TrainConfig

    # Every option defaults to None so that only the options actually given override
    # TrainConfig's defaults (or, with --resume, the run's saved settings).
    d = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help=f"train a model (default: {d.model} on the built-in digits, CPU, under a minute)",
        description=f"Train a BoTNet. With no options: {d.model} on scikit-learn's digits (8x8 upsampled to "
        f"32 px, fixed stratified 80/20 split), {d.epochs} epochs on the CPU. Writes OUT/{{last,best}}.pt, "
        "OUT/{last,best}.safetensors, OUT/metrics.jsonl and OUT/config.json. Under torchrun it uses "
        "DistributedDataParallel (nccl on GPU, gloo on CPU); --batch-size is per process.",
    )
    g = parser.add_argument_group("data and model")
    g.add_argument("--model", help=f"registered model name (default {d.model}; see `botnet info --list`)")
    g.add_argument("--dataset", choices=DATASETS, help=f"default {d.dataset}")
    g.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default /usr/share/datasets/fashion-mnist) "
                   "or an ImageFolder root (class sub-directories, or train/ and val/)")
    g.add_argument("--img-size", type=int, help="input side in px (default: digits 32, fashion-mnist 28, folder 64)")
    g.add_argument("--in-chans", type=int, choices=(1, 3), help=f"image folders: read as grey or RGB (default {d.in_chans})")
    g.add_argument("--val-fraction", type=float, help=f"folders without val/: held-out share (default {d.val_fraction})")
    g.add_argument("--bad-images", choices=("skip", "error"),
                   help=f"folders: unreadable images are reported and skipped, or stop the run (default {d.bad_images})")
    g = parser.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    g.add_argument("-b", "--batch-size", type=int, help=f"per process (default {d.batch_size})")
    g.add_argument("--accum-steps", type=int,
                   help="split each batch into N interleaved micro-batches (less memory; one optimiser step)")
    g.add_argument("--opt", choices=OPTIMIZERS, help=f"default {d.opt} (Nesterov momentum)")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    g.add_argument("--weight-decay", "--wd", type=float, help=f"on conv/linear weights only (default {d.weight_decay})")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    g.add_argument("--warmup-epochs", type=float, help=f"linear warm-up, then cosine (default {d.warmup_epochs})")
    g.add_argument("--label-smoothing", type=float, help=f"default {d.label_smoothing}")
    g.add_argument("--aug", choices=("none", "basic", "randaugment"), help=f"default {d.aug}")
    g.add_argument("--mixup", type=float, help="MixUp alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    g.add_argument("--clip-grad", type=float, help=f"max gradient norm, 0: off (default {d.clip_grad})")
    g.add_argument("--drop-rate", type=float, help="dropout before the classifier")
    g.add_argument("--ema", action="store_true", default=None, help="keep an EMA of the weights; it is evaluated and saved")
    g.add_argument("--ema-decay", type=float, help=f"default {d.ema_decay}")
    g = parser.add_argument_group("run")
    g.add_argument("--out", help="run directory (default runs/DATASET-MODEL-TIME)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR (or DIR/last.pt) exactly where it stopped")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision (bf16, or fp16 with a grad scaler)")
    g.add_argument("--amp-dtype", choices=("bfloat16", "float16"), help=f"default {d.amp_dtype}")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under torchrun (CUDA only)")
    g.add_argument("--seed", type=int, help=f"default {d.seed}")
    g.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms only")
    g.add_argument("-j", "--workers", type=int, help=f"data-loading processes (default {d.workers}: in the main process)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the final summary as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train

    names = {f for f in TrainConfig.__dataclass_fields__}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    summary = train(resume=args.resume, **given)
    if args.json:
        print(json.dumps(summary))
    return 0
