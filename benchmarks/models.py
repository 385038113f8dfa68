"""Training-step throughput and peak memory: BoTNet vs ResNet, eager and torch.compile.

One training step = forward, cross-entropy, backward, SGD (momentum) update,
on random images, channels_last, in train mode; on CUDA under bf16 autocast.
Each (model, mode) runs in its own process: warm-up steps first (compilation
happens there and is not timed), then the peak memory of one step (growth over
the baseline after model, optimizer state and batch exist), then the timed
steps: img/s = batch / best step time (on a shared machine other processes
only ever add time; the median is kept in the JSON too).

Models: ours ``botnet50`` and ``resnet50`` and timm's ``resnet50`` at 224 px;
the small ones (``botnet26`` / ``resnet26``, ``botnet_tiny`` / ``resnet_tiny``)
at 32 px; the Fashion-MNIST pair (``botnet_fmnist`` / ``resnet_fmnist``) as
trained there: 28 px, one input channel, 10 classes.

Usage::

    python benchmarks/models.py                                # CPU: short run
    python benchmarks/models.py --device cuda --batch-224 64   # GPU, bf16
    python benchmarks/models.py --modes eager --models botnet50 resnet50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import common  # noqa: I001  (benchmarks/ is on sys.path when run as a script)

SCRIPT = Path(__file__).resolve()
# name -> image size; "timm:" names come from timm (the [bench] extra).
MODELS = {
    "botnet50": 224,
    "resnet50": 224,
    "timm:resnet50": 224,
    "botnet26": 32,
    "resnet26": 32,
    "botnet_tiny": 32,
    "resnet_tiny": 32,
    "botnet_fmnist": 28,
    "resnet_fmnist": 28,
}
# Models built as their recipe trains them (the default: 3 input channels, 1000 classes).
SHAPES = {"botnet_fmnist": dict(in_chans=1, num_classes=10), "resnet_fmnist": dict(in_chans=1, num_classes=10)}
# Which model each one is compared with (same mode) for the throughput ratio.
BASELINES = {"botnet50": "resnet50", "timm:resnet50": "resnet50", "botnet26": "resnet26", "botnet_tiny": "resnet_tiny",
             "botnet_fmnist": "resnet_fmnist"}
DEFAULTS = {  # device -> (batch at 224 px, batch of the small models, warm-up steps, timed steps)
    "cpu": (4, 64, 2, 3),
    "cuda": (64, 256, 5, 20),
}


def create(name: str) -> torch.nn.Module:
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=1000)
    from botnet.models import create_model

    return create_model(name, **SHAPES.get(name, dict(in_chans=3, num_classes=1000)))


def worker(args: argparse.Namespace) -> None:
    """Measure one (model, mode) in this fresh process; print JSON."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create(args.worker).to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if args.mode == "compile" else model
    size = args.img_size
    shape = SHAPES.get(args.worker, dict(in_chans=3, num_classes=1000))
    images = torch.randn(args.batch, shape["in_chans"], size, size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, shape["num_classes"], (args.batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    common.sync(device)
    warmup_s = time.perf_counter() - start
    peak, times = common.peak_then_times(step, device, args.steps)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "img_per_s": args.batch / min(times), "img_per_s_median": args.batch / common.median(times),
        "step_ms": [round(1e3 * t, 2) for t in times],
        "peak_bytes": peak, "warmup_s": warmup_s, "params": params,
    }))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--batch-224", type=int, default=None, help="batch at 224 px")
    parser.add_argument("--batch-32", type=int, default=None, help="batch of the small models (32 and 28 px)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per (model, mode)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/models_<device>.json)")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--img-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    device = common.device_from(parser, args)
    batch_224, batch_32, warmup, steps = DEFAULTS[device.type]
    batch_224, batch_32 = args.batch_224 or batch_224, args.batch_32 or batch_32
    warmup, steps = args.warmup or warmup, args.steps or steps

    rows = []
    for mode in args.modes:
        for name in args.models:
            size = MODELS[name]
            batch = batch_224 if size == 224 else batch_32
            worker_args = [
                "--worker", name, "--mode", mode, "--img-size", str(size), "--batch", str(batch),
                "--device", args.device, "--warmup", str(warmup), "--steps", str(steps),
            ]  # fmt: skip
            if not args.channels_last:
                worker_args.append("--no-channels-last")
            try:
                result = common.run_worker(SCRIPT, worker_args, timeout=args.timeout)
            except Exception as exc:  # subprocess.TimeoutExpired
                result = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            row = {"model": name, "mode": mode, "img_size": size, "batch": batch, **result}
            rows.append(row)
            status = row.get("error") or f"{row['img_per_s']:.1f} img/s, {row['peak_bytes'] / common.MIB:.0f} MiB"
            print(f"{mode:>8} {name:>14} {size}px b{batch}: {status}", file=sys.stderr, flush=True)

    for row in rows:
        base = next((r for r in rows if r["model"] == BASELINES.get(row["model"]) and r["mode"] == row["mode"]), None)
        if base and "img_per_s" in row and "img_per_s" in base:
            row["throughput_vs_baseline"] = row["img_per_s"] / base["img_per_s"]
            row["baseline"] = base["model"]

    info = common.machine_info(device)
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    title = (f"Training step (fwd+loss+bwd+SGD), {precision}, "
             f"{'channels_last' if args.channels_last else 'NCHW'}, {info.get('gpu', info['cpu'])}")  # fmt: skip
    print_table(rows, title)
    out = args.out or common.results_path("models", device)
    config = {"warmup": warmup, "steps": steps, "channels_last": args.channels_last, "precision": precision}
    common.write_json(out, {"machine": info, "config": config, "results": rows})
    out.with_suffix(".md").write_text(markdown(rows))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(rows: list[dict]) -> str:
    header = ["mode", "model", "px", "batch", "params", "img/s (best step)", "img/s (median)", "vs baseline",
              "peak MiB"]  # fmt: skip
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["mode"], r["model"], str(r["img_size"]), str(r["batch"]), "-", r["error"][:60], "", "", ""])
            continue
        ratio = f"{r['throughput_vs_baseline']:.2f}x {r['baseline']}" if "throughput_vs_baseline" in r else "-"
        body.append([
            r["mode"], r["model"], str(r["img_size"]), str(r["batch"]), f"{r['params'] / 1e6:.1f}M",
            f"{r['img_per_s']:.1f}", f"{r['img_per_s_median']:.1f}", ratio, f"{r['peak_bytes'] / common.MIB:.0f}",
        ])  # fmt: skip
    return common.markdown_table(header, body)


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("mode", "model", "px", "batch", "params", "img/s", "vs baseline", "peak MiB", "warm-up s"):
        table.add_column(col, justify="left" if col in ("mode", "model") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["mode"], r["model"], str(r["img_size"]), str(r["batch"]), f"[dim]{r['error'][:60]}[/dim]")
            continue
        ratio = f"{r['throughput_vs_baseline']:.2f}x {r['baseline']}" if "throughput_vs_baseline" in r else "-"
        table.add_row(
            r["mode"], r["model"], str(r["img_size"]), str(r["batch"]), f"{r['params'] / 1e6:.1f}M",
            f"{r['img_per_s']:.1f}", ratio, f"{r['peak_bytes'] / common.MIB:.0f}", f"{r['warmup_s']:.0f}",
        )  # fmt: skip
    Console(width=max(Console().width, 120)).print(table)


if __name__ == "__main__":
    main()
