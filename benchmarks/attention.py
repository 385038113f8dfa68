"""One BoTNet attention layer, forward + backward: our paths vs the public implementations.

Compares, at the same dim / heads / dim_head (512, 4, 128 by default) and
2D relative position logits:

- ``ours/<backend>``: :class:`botnet.layers.MHSA2d` with each attention path
  (``auto`` is what users get; ``flex`` only on CUDA; ``fold`` is SDPA
  without a mask on position logits folded into q and k);
- ``timm``: ``timm.layers.bottleneck_attn.BottleneckAttn``;
- ``btp``: ``bottleneck_transformer_pytorch``'s ``Attention`` (rel_pos_emb=True);
- ``floor``: the layer's matrix products alone (q/k/v projection, q k^T,
  weights v, the two position matmuls) with their backward: no softmax, no
  bias add, no reshapes. A lower bound for any implementation.

Both peers fix the feature-map size at construction; they are built for each
size. Time: in this process, each implementation in turn per round (ratios between
implementations are what matter), best of interleaved rounds. Memory: peak growth during one step.
On CPU each implementation runs in a fresh process (peak RSS follows whatever
the process ever touched). On CUDA it is measured in this process:
``torch.cuda.max_memory_allocated`` counts live tensors only, so the other
implementations do not disturb it, and a fresh process per implementation
would recompile ``flex`` for every size. On CUDA everything runs under bf16 autocast.

Usage (peers from the ``[bench]`` extra)::

    python benchmarks/attention.py                       # CPU, all sizes
    python benchmarks/attention.py --device cuda          # GPU, bf16 autocast
    python benchmarks/attention.py --sizes 14:16 64:2 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import common  # noqa: I001  (benchmarks/ is on sys.path when run as a script)
from botnet.layers import MHSA2d

SCRIPT = Path(__file__).resolve()
PEERS = ("timm", "btp")
DEFAULT_SIZES = ("7:32", "14:16", "32:4", "64:2")


class MatmulFloor(nn.Module):
    """Only the matrix products of one attention layer (a time floor, not a layer).

    Projection ``W x`` (B, 3*h*d, N); ``q k^T`` (B, h, N, N); ``(q k^T) v``;
    the relative logits ``q . table`` as (B, h, H, W, H) and (B, h, H, W, W)
    against the already gathered (H, H, d) / (W, W, d) tables. Backward runs
    the transposed products of each.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, size: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.weight = nn.Parameter(torch.randn(3 * heads * dim_head, dim) * dim**-0.5)
        self.table_h = nn.Parameter(torch.randn(size, size, dim_head) * dim_head**-0.5)
        self.table_w = nn.Parameter(torch.randn(size, size, dim_head) * dim_head**-0.5)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, _, height, width = x.shape
        n = height * width
        qkv = torch.matmul(self.weight, x.flatten(2))
        q, k, v = qkv.view(batch, 3, self.heads, self.dim_head, n).transpose(-2, -1).unbind(1)
        out = (q @ k.transpose(-2, -1)) @ v
        q2d = q.reshape(batch, self.heads, height, width, self.dim_head)
        pos_h = torch.einsum("bnyxd,ykd->bnyxk", q2d, self.table_h)
        pos_w = torch.einsum("bnyxd,xkd->bnyxk", q2d, self.table_w)
        return out, pos_h, pos_w


def build(name: str, size: int, dim: int, heads: int, dim_head: int) -> nn.Module:
    """The module called ``name`` for a size x size map (ImportError if a peer is missing)."""
    if name.startswith("ours/"):
        return MHSA2d(dim, heads=heads, dim_head=dim_head, ref_size=size, backend=name.split("/", 1)[1])
    if name == "floor":
        return MatmulFloor(dim, heads, dim_head, size)
    if name == "timm":
        from timm.layers.bottleneck_attn import BottleneckAttn

        # dim_out sets the value width: heads * dim_head like ours.
        return BottleneckAttn(dim, dim_out=heads * dim_head, feat_size=(size, size), num_heads=heads, dim_head=dim_head)
    if name == "btp":
        from bottleneck_transformer_pytorch.bottleneck_transformer_pytorch import Attention

        return Attention(dim=dim, fmap_size=(size, size), heads=heads, dim_head=dim_head, rel_pos_emb=True)
    raise ValueError(f"unknown implementation {name!r}")


def default_impls(device: torch.device) -> list[str]:
    ours = ["ours/auto", "ours/math", "ours/chunked", "ours/sdpa", "ours/fold"]
    if device.type == "cuda":
        ours.append("ours/flex")
    return [*ours, *PEERS, "floor"]


def make_step(module: nn.Module, x: Tensor, device: torch.device):
    """A closure running forward + backward (gradients for x and all parameters)."""
    wanted = [x, *module.parameters()]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        outs = module(x)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]

    def step() -> None:
        with autocast:
            result = module(x)
        result = result if isinstance(result, tuple) else (result,)
        torch.autograd.grad(result, wanted, grads)

    return step


def make_input(size: int, batch: int, dim: int, device: torch.device) -> Tensor:
    return torch.randn(batch, dim, size, size, device=device, requires_grad=True)


def worker(args: argparse.Namespace) -> None:
    """Measure one implementation's peak memory in this (fresh) process; print JSON."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = build(args.worker, args.size, args.dim, args.heads, args.dim_head).to(device)
    step = make_step(module, make_input(args.size, args.batch, args.dim, device), device)
    step()  # one-time initialisation (kernels, compilation) is not what we measure
    meter = common.PeakMemory(device)
    meter.start()
    step()
    print(json.dumps({"peak_bytes": meter.stop()}))


def measure(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for spec in args.sizes:
        size, batch = (int(v) for v in spec.split(":"))
        torch.manual_seed(0)
        x = make_input(size, batch, args.dim, device)
        steps, errors = {}, {}
        for name in args.impls:
            try:
                steps[name] = make_step(build(name, size, args.dim, args.heads, args.dim_head).to(device), x, device)
            except ImportError as exc:
                errors[name] = f"not installed ({exc.name}); pip install 'botnet[bench]'"
            except Exception as exc:  # a path this torch/device cannot run
                errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        # Small maps are quick and the most disturbed by other processes: more rounds.
        rounds = args.repeat * (3 if size * size <= 256 else 1)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        times = common.time_interleaved(steps, device, repeat=rounds, clock=clock)
        for name in args.impls:
            row = {"impl": name, "size": size, "batch": batch}
            if name in errors:
                row["error"] = errors[name]
            else:
                # Best round: on a shared machine, other processes only ever add time.
                row["time_ms"] = 1e3 * min(times[name])
                row["median_ms"] = 1e3 * common.median(times[name])
                row["times_ms"] = [round(1e3 * t, 3) for t in times[name]]
                if device.type == "cuda":
                    mem = _peak_in_process(steps[name], device)
                else:
                    mem = common.run_worker(SCRIPT, _worker_args(args, name, size, batch))
                if "error" in mem:
                    row["memory_error"] = mem["error"]
                else:
                    row["peak_mib"] = mem["peak_bytes"] / common.MIB
            rows.append(row)
            print(_progress_line(row), file=sys.stderr, flush=True)
        del steps, x
    return rows


def _peak_in_process(step, device: torch.device) -> dict:
    """Peak CUDA memory growth of one ``step()`` in this process ({"peak_bytes"} or {"error"})."""
    meter = common.PeakMemory(device)
    try:
        meter.start()
        step()
        return {"peak_bytes": meter.stop()}
    except torch.OutOfMemoryError as exc:
        return {"error": f"OutOfMemoryError: {str(exc).splitlines()[0][:160]}"}


def _worker_args(args: argparse.Namespace, name: str, size: int, batch: int) -> list[str]:
    return [
        "--worker", name, "--size", str(size), "--batch", str(batch), "--device", args.device,
        "--dim", str(args.dim), "--heads", str(args.heads), "--dim-head", str(args.dim_head),
        *(["--threads", str(args.threads)] if args.threads else []),
    ]  # fmt: skip


def _progress_line(row: dict) -> str:
    what = f"{row['impl']:>13} {row['size']}x{row['size']} b{row['batch']}"
    if "error" in row:
        return f"{what}: {row['error']}"
    mem = f"{row['peak_mib']:.0f} MiB" if "peak_mib" in row else row.get("memory_error", "")
    return f"{what}: {row['time_ms']:.1f} ms, {mem}"


def _best(rows: list[dict], key: str, names) -> dict | None:
    candidates = [r for r in rows if r["impl"] in names and key in r]
    return min(candidates, key=lambda r: r[key]) if candidates else None


def summarize(rows: list[dict]) -> list[dict]:
    """Per size: ratios to the floor and to the fastest / leanest peer."""
    for size in sorted({r["size"] for r in rows}):
        group = [r for r in rows if r["size"] == size]
        floor = _best(group, "time_ms", ["floor"])
        fastest = _best(group, "time_ms", PEERS)
        leanest = _best(group, "peak_mib", PEERS)
        for r in group:
            if floor and "time_ms" in r:
                r["time_vs_floor"] = r["time_ms"] / floor["time_ms"]
            if fastest and "time_ms" in r:
                r["time_vs_fastest_peer"] = r["time_ms"] / fastest["time_ms"]
            if leanest and "peak_mib" in r and leanest["peak_mib"] > 0:
                r["memory_vs_leanest_peer"] = r["peak_mib"] / leanest["peak_mib"]
    return rows


def fmt(row: dict, key: str, spec: str) -> str:
    """``row[key]`` formatted with ``spec``, or "-" where it was not measured."""
    return format(row[key], spec) if key in row else "-"


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("map", "batch", "impl", "fwd+bwd ms", "median ms", "x floor", "x fastest peer", "peak MiB",
                "x leanest peer"):
        table.add_column(col, justify="left" if col == "impl" else "right")

    last_size = None
    for r in rows:
        if last_size is not None and r["size"] != last_size:
            table.add_section()
        last_size = r["size"]
        if "error" in r:
            table.add_row(f"{r['size']}x{r['size']}", str(r["batch"]), r["impl"], "[dim]skipped[/dim]")
            continue
        style = "bold" if r["impl"] == "ours/auto" else None
        table.add_row(
            f"{r['size']}x{r['size']}", str(r["batch"]), r["impl"],
            fmt(r, "time_ms", ".1f"), fmt(r, "median_ms", ".1f"),
            fmt(r, "time_vs_floor", ".2f"), fmt(r, "time_vs_fastest_peer", ".2f"),
            fmt(r, "peak_mib", ".0f"), fmt(r, "memory_vs_leanest_peer", ".3f"), style=style,
        )  # fmt: skip
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for r in rows:
        if "error" in r or "memory_error" in r:
            console.print(f"[dim]{r['impl']} at {r['size']}x{r['size']}: {r.get('error') or r['memory_error']}[/dim]")


def markdown(rows: list[dict]) -> str:
    header = ["map", "batch", "impl", "fwd+bwd ms (best)", "median ms", "x floor", "x fastest peer", "peak MiB",
              "x leanest peer"]  # fmt: skip
    body = [
        [f"{r['size']}x{r['size']}", str(r["batch"]), f"**{r['impl']}**" if r["impl"] == "ours/auto" else r["impl"],
         fmt(r, "time_ms", ".1f"), fmt(r, "median_ms", ".1f"), fmt(r, "time_vs_floor", ".2f"),
         fmt(r, "time_vs_fastest_peer", ".2f"), fmt(r, "peak_mib", ".0f"), fmt(r, "memory_vs_leanest_peer", ".3f")]
        for r in rows if "error" not in r
    ]  # fmt: skip
    return common.markdown_table(header, body)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(r["size"], r["batch"]) for r in rows})
    labels = [f"{s}x{s}\nbatch {b}" for s, b in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = ((axes[0], "time_vs_floor", "forward + backward time / matmul floor"),
              (axes[1], "peak_mib", "peak memory (MiB, log scale)"))  # fmt: skip
    for ax, key, ylabel in panels:
        for impl in dict.fromkeys(r["impl"] for r in rows):
            points = [(i, r[key]) for i, sb in enumerate(sizes) for r in rows
                      if r["impl"] == impl and (r["size"], r["batch"]) == sb and r.get(key, 0) > 0]  # fmt: skip
            if not points:
                continue
            style = "--" if impl in PEERS else (":" if impl == "floor" else "-")
            ax.plot(*zip(*points), style, marker="o", label=impl, linewidth=2.4 if impl == "ours/auto" else 1.3)
        if key == "peak_mib":
            ax.set_yscale("log")
        ax.set_xticks(range(len(sizes)), labels)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_targets(rows: list[dict], device: torch.device) -> list[str]:
    """The issue's targets for ``ours/auto``, as measured (hit / missed lines)."""
    lines = []

    def get(impl, size):
        return next((r for r in rows if r["impl"] == impl and r["size"] == size), None)

    def verdict(ok):
        return "HIT" if ok else "MISSED"

    ours14, ours64 = get("ours/auto", 14), get("ours/auto", 64)
    if device.type == "cpu" and ours14 and "time_vs_fastest_peer" in ours14 and "time_vs_floor" in ours14:
        r = ours14
        lines.append(f"14x14 b{r['batch']} time vs fastest peer {r['time_vs_fastest_peer']:.2f}x (target <= 1.00): "
                     f"{verdict(r['time_vs_fastest_peer'] <= 1.0)}")  # fmt: skip
        lines.append(f"14x14 b{r['batch']} time vs matmul floor {r['time_vs_floor']:.2f}x (target <= 1.25): "
                     f"{verdict(r['time_vs_floor'] <= 1.25)}")  # fmt: skip
    if ours64 and "memory_vs_leanest_peer" in ours64 and "time_vs_fastest_peer" in ours64:
        r = ours64
        mem_target, time_target = (0.25, 1.0) if device.type == "cpu" else (1 / 8, 1 / 3)
        lines.append(f"64x64 b{r['batch']} memory vs leanest peer {r['memory_vs_leanest_peer']:.3f}x "
                     f"(target <= {mem_target:.3f}): {verdict(r['memory_vs_leanest_peer'] <= mem_target)}")  # fmt: skip
        lines.append(f"64x64 b{r['batch']} time vs fastest peer {r['time_vs_fastest_peer']:.2f}x "
                     f"(target <= {time_target:.2f}): {verdict(r['time_vs_fastest_peer'] <= time_target)}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="SIZE:BATCH pairs")
    parser.add_argument("--impls", nargs="+", default=None, help="default: all for the device")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per implementation (x3 up to 16x16)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim-head", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON (default benchmarks/results/attention_<device>.json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: next to the JSON)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time steps by wall clock, or by this process's CPU time (steadier on a loaded CPU; "
                             "use with --threads 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)

    device = common.device_from(parser, args)
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu times the host process; on CUDA use the default wall clock")
    args.impls = args.impls or default_impls(device)
    out = args.out or common.results_path("attention", device)
    png = args.plot or out.with_suffix(".png")

    load_before = os.getloadavg()
    rows = summarize(measure(args))
    info = common.machine_info(device)
    info["load_avg_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    title = (f"BoTNet attention layer fwd+bwd, dim {args.dim}, {args.heads} heads x {args.dim_head}, "
             f"{'bf16 autocast' if device.type == 'cuda' else 'float32'}, {info.get('gpu', info['cpu'])}, "
             f"{info['torch_threads']} threads" + (", CPU time" if args.clock == "cpu" else ""))  # fmt: skip
    print_table(rows, title)
    targets = check_targets(rows, device)
    for line in targets:
        print(line)
    config = {"dim": args.dim, "heads": args.heads, "dim_head": args.dim_head, "repeat": args.repeat,
              "clock": args.clock}
    common.write_json(out, {"machine": info, "config": config, "targets": targets, "results": rows})
    plot(rows, png, title)
    out.with_suffix(".md").write_text(markdown(rows) + "\n" + "".join(f"- {line}\n" for line in targets))
    print(f"wrote {out}, {png} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
