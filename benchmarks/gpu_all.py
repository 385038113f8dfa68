"""Issue 13 on a GPU machine in one command: CUDA tests, every CUDA attention path, the numbers.

    PYTHONPATH=src python benchmarks/gpu_all.py --out "$OUT"

Runs these stages in order, each as subprocesses with a time limit, and
writes everything under ``--out`` (default ``$OUT``, else
``benchmarks/results/gpu_<date>``), JSON with the GPU name, torch / CUDA
versions and the date inside:

``tests``
    ``pytest tests/test_attention_paths.py`` (every path against the
    reference, CPU and CUDA tests) and ``pytest -m cuda`` over the other test
    files; junit XML turned into ``tests.json`` (counts, failures, skips).
``kernels``
    ``kernels.json``: for each of ``sdpa`` (float mask), ``fold``, ``flex``
    and ``chunked`` at 7x7 to 96x96 (batch 2, 4 heads x 128, bf16 q / k / v,
    float32 bias as MHSA2d passes them): which aten SDPA kernel ran forward
    and backward (torch.profiler), peak ``torch.cuda.max_memory_allocated``
    growth of one forward + backward, whether two backward passes give
    bitwise equal gradients, and the error against the float32 reference.
``paths``
    ``benchmarks/attention.py --device cuda`` over our paths only
    (math, sdpa, flex, fold, chunked, auto, and the matmul floor), one full
    MHSA layer in bf16 autocast, 7x7 to 96x96: ``attention_paths_cuda.json``.
``peers``
    ``benchmarks/attention.py --device cuda`` at its default sizes with the
    peers (timm; bottleneck-transformer-pytorch when installed, else its
    rows say "not installed") and the issue's GPU targets:
    ``attention_cuda.json``.
``models``
    ``benchmarks/models.py --device cuda`` (botnet50 / resnet50 / timm's
    resnet50 at 224 px, batch 64, eager and compile): ``models_cuda.json``.

``summary.json`` is rewritten after every stage (command, exit status,
seconds, log file, timed out or not), so a run cut short keeps what finished.
The stages share ``--budget`` seconds (default 570, under a 10-minute
command limit); a stage that does not fit is marked "not run" and can be
run on its own with ``--stages``. ``--device cpu --quick`` runs the same
machinery at toy sizes on a CPU (used by the test suite).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

import common  # noqa: I001  (benchmarks/ is on sys.path when run as a script)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STAGES = ("tests", "kernels", "paths", "peers", "models")
# Seconds each stage may take at most (full run on an H100-class GPU), within --budget.
STAGE_CAPS = {"tests": 180, "kernels": 120, "paths": 180, "peers": 90, "models": 270}
KERNEL_PATHS = ("sdpa", "fold", "flex", "chunked")


def stage_commands(stage: str, args: argparse.Namespace, out: Path) -> list[list[str]]:
    """The argv lists one stage runs (all with this Python, from the repository root)."""
    py = sys.executable
    quick = args.quick
    dev = ["--device", args.device]
    if stage == "tests":
        if quick:  # CPU smoke: the CUDA tests are collected and skipped
            return [[py, "-m", "pytest", "-q", "-rs", "-m", "cuda", "tests/test_attention_paths.py",
                     f"--junitxml={out / 'tests_cuda.xml'}"]]  # fmt: skip
        return [
            [py, "-m", "pytest", "-q", "-rs", "tests/test_attention_paths.py",
             f"--junitxml={out / 'tests_attention_paths.xml'}"],
            [py, "-m", "pytest", "-q", "-rs", "-m", "cuda", "tests", "--ignore=tests/test_attention_paths.py",
             f"--junitxml={out / 'tests_cuda.xml'}"],
        ]  # fmt: skip
    if stage == "kernels":
        sizes = ["3", "5"] if quick else ["7", "14", "32", "64", "96"]
        shape = ["--heads", "2", "--dim-head", "8"] if quick else []
        return [[py, str(Path(__file__).resolve()), "--kernels-report", str(out / "kernels.json"), *dev,
                 "--kernel-sizes", *sizes, *shape]]  # fmt: skip
    small = ["--dim", "16", "--heads", "2", "--dim-head", "8", "--repeat", "1"] if quick else []
    attention = [py, str(HERE / "attention.py"), *dev, *small]
    if stage == "paths":
        impls = ["ours/math", "ours/sdpa", "ours/fold", "ours/chunked", "ours/auto", "floor"]
        if args.device == "cuda":
            impls.insert(2, "ours/flex")
        sizes = ["5:2", "7:1"] if quick else ["7:64", "14:32", "32:8", "64:2", "96:2"]
        return [[*attention, "--impls", *impls, "--sizes", *sizes, "--repeat", "1" if quick else "5",
                 "--out", str(out / f"attention_paths_{args.device}.json")]]  # fmt: skip
    if stage == "peers":
        impls = ["ours/auto", "ours/sdpa", "ours/fold", "timm", "btp", "floor"]
        sizes = ["7:1"] if quick else ["7:32", "14:16", "32:4", "64:2"]
        return [[*attention, "--impls", *impls, "--sizes", *sizes,
                 "--out", str(out / f"attention_{args.device}.json")]]  # fmt: skip
    if stage == "models":
        if quick:
            which = ["--models", "botnet_tiny", "--modes", "eager", "--batch-32", "2", "--warmup", "1", "--steps", "1"]
        else:
            which = ["--models", "botnet50", "resnet50", "timm:resnet50", "--batch-224", "64", "--timeout", "150"]
        return [[py, str(HERE / "models.py"), *dev, *which, "--out", str(out / f"models_{args.device}.json")]]
    raise ValueError(stage)


def run_command(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run ``cmd`` in its own process group, output to ``log``; kill the group on timeout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=max(1.0, timeout)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: models.py / attention.py workers too
            rc, timed_out = proc.wait(), True
    tail = log.read_text(errors="replace")[-1500:]
    seconds = round(time.perf_counter() - start, 1)
    return {"command": " ".join(cmd), "rc": rc, "timed_out": timed_out, "seconds": seconds, "log": log.name,
            "tail": tail}  # fmt: skip


def junit_summary(paths: list[Path]) -> dict:
    """Counts, failures and skip reasons from pytest's junit XML files."""
    report = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skips": []}
    for path in paths:
        if not path.exists():
            continue
        for case in ET.parse(path).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                bad = case.find("failure") if case.find("failure") is not None else case.find("error")
                report["failed" if bad.tag == "failure" else "errors"] += 1
                report["failures"].append({"test": name, "message": (bad.get("message") or "")[:500]})
            elif case.find("skipped") is not None:
                report["skipped"] += 1
                report["skips"].append({"test": name, "reason": (case.find("skipped").get("message") or "")[:200]})
            else:
                report["passed"] += 1
    return report


def paths_verdict(path: Path) -> list[dict]:
    """Per map size, from the ``paths`` stage: our paths by time, and the fastest and leanest.

    What ``auto`` on CUDA should pick (``attention_paths.auto_backend``) is
    decided from this: today it picks ``sdpa`` beyond the small-map limit.
    """
    if not path.exists():
        return []
    rows = [r for r in json.loads(path.read_text())["results"] if r["impl"].startswith("ours/") and "time_ms" in r]
    verdict = []
    for size in sorted({r["size"] for r in rows}):
        group = sorted((r for r in rows if r["size"] == size and r["impl"] != "ours/auto"), key=lambda r: r["time_ms"])
        auto = next((r for r in rows if r["size"] == size and r["impl"] == "ours/auto"), None)
        with_mem = [r for r in group if "peak_mib" in r]
        verdict.append({
            "size": size, "batch": group[0]["batch"] if group else None,
            "by_time": [(r["impl"], round(r["time_ms"], 2), round(r.get("peak_mib", float("nan")), 1)) for r in group],
            "fastest": group[0]["impl"] if group else None,
            "leanest": min(with_mem, key=lambda r: r["peak_mib"])["impl"] if with_mem else None,
            "auto_ms": auto and round(auto["time_ms"], 2),
        })  # fmt: skip
    return verdict


def machine(device: torch.device) -> dict:
    info = common.machine_info(device)
    info["datetime"] = datetime.datetime.now().isoformat(timespec="seconds")
    info["cuda"] = torch.version.cuda
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


# ---------------------------------------------------------------------------
# kernels report (runs in its own process)
# ---------------------------------------------------------------------------


def _kernel_names(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    keys = {e.key for e in prof.key_averages()}
    return sorted(k for k in keys if k.startswith("aten::_scaled_dot_product") or "flex" in k.lower())


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def kernels_report(args: argparse.Namespace, report: Path) -> None:
    """Write the kernels report to ``report``, rewritten after every row (a run cut short keeps its rows)."""
    from botnet.layers.attention import attention_math
    from botnet.layers.attention_paths import ATTENTION_PATHS, flex_available, fold_widths
    from botnet.layers.mhsa import _FUSED

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch, heads, dim = 2, args.heads, args.dim_head
    paths = [p for p in KERNEL_PATHS if p != "flex" or (device.type == "cuda" and flex_available())]
    info = machine(device)
    rows = []
    for side in args.kernel_sizes:
        n = side * side
        gen = torch.Generator(device=device).manual_seed(0)

        def randn(*shape, scale=1.0):
            return torch.randn(*shape, device=device, generator=gen) * scale

        base = [randn(batch, heads, n, dim, scale=dim**-0.5), randn(batch, heads, n, dim), randn(batch, heads, n, dim),
                randn(batch, heads, n, side), randn(batch, heads, n, side)]  # fmt: skip
        grad_out = randn(batch, heads, n, dim).to(dtype)
        ref = ref_grads = None
        if n <= 4096:  # float32 reference on the same (rounded) values
            ref_in = [t.to(dtype).float().requires_grad_() if i < 3 else t.clone().requires_grad_()
                      for i, t in enumerate(base)]  # fmt: skip
            ref = attention_math(*ref_in)
            ref_grads = torch.autograd.grad(ref, ref_in, grad_out.float())
        for path in paths:
            row = {"path": path, "size": side, "batch": batch, "heads": heads, "dim_head": dim, "dtype": str(dtype)}
            if path == "fold":
                row["fold_widths"] = fold_widths(device.type, dtype, dim + 2 * side, dim)
            # As MHSA2d calls them: fused paths take q, k, v in the half dtype, the others q and k in float32.
            qk_dtype = dtype if path in _FUSED else torch.float32
            q, k, v, bias_h, bias_w = base
            inputs = [q.to(dtype).to(qk_dtype), k.to(dtype).to(qk_dtype), v.to(dtype), bias_h.clone(), bias_w.clone()]
            inputs = [t.detach().requires_grad_() for t in inputs]
            fn = ATTENTION_PATHS[path]

            def step():
                out = fn(*inputs)
                return out, torch.autograd.grad(out, inputs, grad_out)

            try:
                step()  # warm-up (compiles flex)
                common.sync(device)
                row["kernels"] = _kernel_names(step)
                meter = common.PeakMemory(device)
                meter.start()
                out, grads = step()
                peak = meter.stop()
                if device.type == "cuda":  # CPU RSS in a long-lived process says little; attention.py measures it
                    row["peak_mib"] = peak / common.MIB
                _, again = step()
                row["deterministic_grads"] = all(torch.equal(a, b) for a, b in zip(grads, again))
                start = time.perf_counter()
                for _ in range(3):
                    step()
                common.sync(device)
                row["fwd_bwd_ms"] = 1e3 * (time.perf_counter() - start) / 3
                if ref is not None:
                    row["out_rel_err"] = _rel_err(out, ref)
                    row["grad_rel_err"] = [_rel_err(g, r) for g, r in zip(grads, ref_grads)]
            except Exception as exc:  # a path this torch / GPU cannot run: record it, go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            common.write_json(report, {"machine": info, "results": rows})
            del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    common.write_json(report, {"machine": info, "results": rows})


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return ROOT / "benchmarks" / "results" / f"gpu_{datetime.date.today().isoformat()}"


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder (default $OUT, else benchmarks/results/gpu_<date>)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--budget", type=float, default=570, help="seconds for all stages together")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a smoke test of this script, e.g. on CPU)")
    parser.add_argument("--kernels-report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[7, 14, 32, 64, 96], help=argparse.SUPPRESS)
    parser.add_argument("--heads", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--dim-head", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = common.device_from(parser, args)
    if args.kernels_report:
        kernels_report(args, args.kernels_report)
        return 0

    out = (args.out or default_out()).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine(device), "argv": sys.argv, "budget_s": args.budget, "stages": {}}
    deadline = time.perf_counter() + args.budget
    for stage in args.stages:
        left = deadline - time.perf_counter()
        cap = STAGE_CAPS[stage] if not args.quick else 300
        if left < 15:
            summary["stages"][stage] = {"status": "not run: budget spent; run it with --stages " + stage}
        else:
            runs = [run_command(cmd, out / "logs" / f"{stage}_{i}.log", min(cap, deadline - time.perf_counter()))
                    for i, cmd in enumerate(stage_commands(stage, args, out))]  # fmt: skip
            ok = all(r["rc"] in (0, 5) and not r["timed_out"] for r in runs)  # pytest 5: nothing selected
            summary["stages"][stage] = {"status": "ok" if ok else "failed", "runs": runs}
            if stage == "paths":
                summary["paths_verdict"] = paths_verdict(out / f"attention_paths_{args.device}.json")
            if stage == "tests":
                tests = junit_summary(sorted(out.glob("tests_*.xml")))
                common.write_json(out / "tests.json", tests)
                summary["stages"][stage]["tests"] = {k: v for k, v in tests.items() if k not in ("failures", "skips")}
        summary["files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        common.write_json(out / "summary.json", summary)
        print(f"[gpu_all] {stage}: {summary['stages'][stage]['status']}", flush=True)
    print(f"[gpu_all] wrote {out}")
    return 0 if all(s["status"] == "ok" for s in summary["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
