"""Training memory and time with and without gradient checkpointing (``model.set_grad_checkpointing()``).

Two tasks, forward + backward in train mode, float32 on CPU (bf16 autocast
on CUDA):

* ``classify``: cross-entropy on the model's logits (ImageNet-sized batch);
* ``features``: the backbone alone, as a detector uses it: the loss is the
  sum of the means of the c2..c5 maps (``model.feature_maps``), batch 1 at
  detection sizes.

Each (configuration, checkpointing) pair runs in its own process: warm-up
steps, then the peak memory of one step (growth over the baseline after the
model and batch exist: activations, saved tensors, parameter gradients,
temporaries), then the timed steps (best step, median kept in the JSON).
Checkpointing keeps only each residual block's input for backward and
recomputes the block there, so the ratios show memory saved against the
price of one more forward. That price is also counted exactly, as the
matmul/convolution FLOPs of one step (``torch.utils.flop_counter``, which
sees the recomputation in backward): on a machine shared with other jobs
the FLOPs ratio is the reliable one, step times only indicate it.

Usage::

    python benchmarks/checkpointing.py                      # botnet50: 224 px b8, features at 640 and 800 px b1
    python benchmarks/checkpointing.py --configs classify:botnet_tiny:32:8 features:botnet_tiny:64:1
    python benchmarks/checkpointing.py --device cuda --configs classify:botnet50:224:64 features:botnet50:1024:2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import common  # noqa: I001  (benchmarks/ is on sys.path when run as a script)

SCRIPT = Path(__file__).resolve()
TASKS = ("classify", "features")
DEFAULT_CONFIGS = ["classify:botnet50:224:8", "features:botnet50:640:1", "features:botnet50:800:1"]


def parse_config(text: str) -> dict:
    """``task:model:px:batch`` -> dict; argparse error text on a malformed one."""
    parts = text.split(":")
    if len(parts) != 4 or parts[0] not in TASKS or not parts[2].isdigit() or not parts[3].isdigit():
        raise argparse.ArgumentTypeError(
            f"expected TASK:MODEL:PX:BATCH with TASK in {TASKS}, e.g. features:botnet50:800:1; got {text!r}"
        )
    return {"task": parts[0], "model": parts[1], "img_size": int(parts[2]), "batch": int(parts[3])}


def worker(args: argparse.Namespace) -> None:
    """Measure one (configuration, checkpointing) in this fresh process; print JSON."""
    from botnet.models import create_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    task = args.task
    model = create_model(args.worker, num_classes=1000 if task == "classify" else 0).to(device).train()
    model.set_grad_checkpointing(args.checkpointing == "on")
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            if task == "classify":
                loss = F.cross_entropy(model(images), labels)
            else:
                loss = sum(m.float().mean() for m in model.feature_maps(images).values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    peak, times = common.peak_then_times(step, device, args.steps)
    with FlopCounterMode(display=False) as flops:
        step()
    print(json.dumps({
        "step_s": min(times), "step_s_median": common.median(times), "step_s_all": [round(t, 3) for t in times],
        "peak_bytes": peak, "flops": flops.get_total_flops(),
    }))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--configs", nargs="+", type=parse_config, default=None,
                        help=f"TASK:MODEL:PX:BATCH (default: {' '.join(DEFAULT_CONFIGS)})")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON (default benchmarks/results/checkpointing_<device>.json)")  # fmt: skip
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", choices=("off", "on"), help=argparse.SUPPRESS)
    parser.add_argument("--img-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    device = common.device_from(parser, args)
    configs = args.configs or [parse_config(c) for c in DEFAULT_CONFIGS]
    rows = []
    for config in configs:
        for checkpointing in ("off", "on"):
            worker_args = [
                "--worker", config["model"], "--task", config["task"], "--checkpointing", checkpointing,
                "--img-size", str(config["img_size"]), "--batch", str(config["batch"]), "--device", args.device,
                "--warmup", str(args.warmup), "--steps", str(args.steps),
            ]  # fmt: skip
            try:
                result = common.run_worker(SCRIPT, worker_args, timeout=args.timeout)
            except Exception as exc:  # subprocess.TimeoutExpired
                result = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            row = {**config, "checkpointing": checkpointing, **result}
            rows.append(row)
            status = row.get("error") or f"{row['step_s']:.2f} s/step, {row['peak_bytes'] / common.MIB:.0f} MiB"
            print(f"{config['task']:>8} {config['model']} {config['img_size']}px b{config['batch']} "
                  f"checkpointing {checkpointing}: {status}", file=sys.stderr, flush=True)  # fmt: skip

    for row in rows:
        base = next(r for r in rows if r["checkpointing"] == "off" and all(r[k] == row[k] for k in
                    ("task", "model", "img_size", "batch")))  # fmt: skip
        if "peak_bytes" in row and "peak_bytes" in base and base["peak_bytes"] > 0:
            row["memory_vs_off"] = row["peak_bytes"] / base["peak_bytes"]
            row["time_vs_off"] = row["step_s"] / base["step_s"]
            row["flops_vs_off"] = row["flops"] / base["flops"]

    info = common.machine_info(device)
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    title = f"Gradient checkpointing, fwd+bwd, train mode, {precision}, {info.get('gpu', info['cpu'])}"
    print_table(rows, title)
    out = args.out or common.results_path("checkpointing", device)
    config = {"warmup": args.warmup, "steps": args.steps, "precision": precision}
    common.write_json(out, {"machine": info, "config": config, "results": rows})
    out.with_suffix(".md").write_text(markdown(rows))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _cells(row: dict) -> list[str]:
    head = [row["task"], row["model"], str(row["img_size"]), str(row["batch"]), row["checkpointing"]]
    if "error" in row:
        return head + [row["error"][:60]] + [""] * (len(HEADER) - len(head) - 1)
    ratio = "memory_vs_off" in row
    return head + [
        f"{row['peak_bytes'] / common.MIB:.0f}", f"{row['memory_vs_off']:.2f}x" if ratio else "-",
        f"{row['flops'] / 1e9:.1f}", f"{row['flops_vs_off']:.2f}x" if ratio else "-",
        f"{row['step_s']:.2f}", f"{row['step_s_median']:.2f}", f"{row['time_vs_off']:.2f}x" if ratio else "-",
    ]  # fmt: skip


HEADER = ["task", "model", "px", "batch", "checkpointing", "peak MiB", "memory vs off", "GFLOPs/step", "FLOPs vs off",
          "s/step (best)", "s/step (median)", "time vs off"]  # fmt: skip


def markdown(rows: list[dict]) -> str:
    return common.markdown_table(HEADER, [_cells(r) for r in rows])


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in HEADER:
        table.add_column(col, justify="left" if col in ("task", "model") else "right")
    for row in rows:
        table.add_row(*_cells(row))
    Console(width=max(Console().width, 120)).print(table)


if __name__ == "__main__":
    main()
