"""Does pretraining help? botnet_fmnist pretrained on Fashion-MNIST, fine-tuned on digits, vs from scratch.

The paper's protocol (pretrain a classifier, then start the next task from
its backbone) at CPU scale, with every run a plain ``botnet train`` command,
one at a time, timed from outside:

1. ``pretrain``: ``botnet_fmnist`` on the real Fashion-MNIST
   (/usr/share/datasets/fashion-mnist), a shortened version of the shipped
   recipe ``configs/fashion_mnist_cpu.yaml`` (``--pretrain-epochs`` epochs
   on ``--pretrain-fraction`` of the training split; one seed, 0). The
   final epoch's weights (``last.safetensors``) are used: nothing is chosen
   on any test set.
2. ``finetune``: ``botnet train --dataset digits --model botnet_fmnist
   --img-size 28 --weights-backbone PRETRAIN/last.safetensors``: every
   backbone tensor (BoT block and position tables included) from the
   pretrained model, a fresh classifier; 10 % (stratified by the seed) and
   100 % of digits' training split (1,437 images); seeds 0, 1, 2.
3. ``scratch``: the same commands without ``--weights-backbone``.

Fine-tuning and scratch share one recipe (the defaults of ``botnet train``:
SGD + Nesterov, lr 0.1, 1 warm-up epoch then cosine, label smoothing 0.1)
and the same budget: ``--epochs-full`` epochs at 100 % (8), ``--epochs-few``
at 10 % (20, and 60 to see whether the gap closes; batch 32 there, so an
epoch is more than two steps). Reported per
arm: the final epoch's top-1 on digits' held-out 360 images (mean and std
over seeds), the gap, and the first epoch whose top-1 reaches 97 % (a
property of the curve, read after training; it selects nothing).

Run directories that already hold a finished run (``wall.json``) are reused.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/transfer.py                  # all stages (~25 min on 1 core)
    python benchmarks/transfer.py --stages report --root runs/transfer
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine_info, markdown_table, write_json

TARGET = 0.97
SEEDS = (0, 1, 2)
FRACTIONS = (0.1, 1.0)
BATCH = {0.1: 32, 1.0: 64}  # at 10 % (142 images) a batch of 32 gives 4 steps an epoch


def run(out: Path, args: list[str]) -> dict:
    """``botnet train ARGS --out OUT`` (skipped when OUT holds a finished run): its wall time and metrics."""
    stamp = out / "wall.json"
    if stamp.is_file():
        return json.loads(stamp.read_text())
    if out.exists():
        import shutil

        shutil.rmtree(out)  # an unfinished run: start it again, so the wall time is one run's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "botnet", "train", *args, "--out", str(out), "--no-progress"]
    print("$", shlex.join(["botnet", "train", *args, "--out", str(out)]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - start
    record = {"command": shlex.join(["botnet", "train", *args, "--out", str(out)]), "wall_seconds": wall}
    stamp.write_text(json.dumps(record) + "\n")
    return record


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def pretrain(root: Path, args: argparse.Namespace) -> Path:
    out = root / "pretrain-fmnist"
    run(out, ["-c", str(ROOT / "configs" / "fashion_mnist_cpu.yaml"), "--seed", "0",
              "--epochs", str(args.pretrain_epochs), "--train-fraction", str(args.pretrain_fraction)])
    return out


def budgets(args: argparse.Namespace) -> list[tuple[float, int]]:
    """(training fraction, epochs) of every comparison."""
    return [(0.1, epochs) for epochs in args.epochs_few] + [(1.0, epochs) for epochs in args.epochs_full]


def arm_name(arm: str, fraction: float, epochs: int, seed: int) -> str:
    return f"{arm}-{int(fraction * 100)}pct-e{epochs}-s{seed}"


def arm_args(fraction: float, epochs: int, seed: int) -> list[str]:
    return ["--dataset", "digits", "--model", "botnet_fmnist", "--img-size", "28", "--epochs", str(epochs),
            "-b", str(BATCH[fraction]), "--train-fraction", str(fraction), "--seed", str(seed)]


def finetune_and_scratch(root: Path, pretrained: Path, args: argparse.Namespace) -> None:
    weights = str(pretrained / "last.safetensors")
    for fraction, epochs in budgets(args):
        for seed in SEEDS:
            run(root / arm_name("finetune", fraction, epochs, seed),
                arm_args(fraction, epochs, seed) + ["--weights-backbone", weights])
            run(root / arm_name("scratch", fraction, epochs, seed), arm_args(fraction, epochs, seed))


def epochs_to(records: list[dict], target: float) -> int | None:
    return next((r["epoch"] for r in records if r["val_acc"] >= target), None)


def report(root: Path, args: argparse.Namespace) -> dict:
    pre = root / "pretrain-fmnist"
    pre_records = metrics(pre)
    rows, table = [], []
    summary: dict = {}
    for fraction, epochs in budgets(args):
        arms = {}
        for arm in ("finetune", "scratch"):
            runs = []
            for seed in SEEDS:
                out = root / arm_name(arm, fraction, epochs, seed)
                records = metrics(out)
                wall = json.loads((out / "wall.json").read_text())
                runs.append({"seed": seed, "final_val_acc": records[-1]["val_acc"],
                             "epochs_to_97": epochs_to(records, TARGET), "epochs": len(records),
                             "curve": [round(r["val_acc"], 4) for r in records], "wall_seconds": wall["wall_seconds"],
                             "command": wall["command"]})
            finals = [r["final_val_acc"] for r in runs]
            arms[arm] = {"runs": runs, "mean": statistics.mean(finals), "std": statistics.stdev(finals),
                         "epochs_to_97": [r["epochs_to_97"] for r in runs]}
        gap = arms["finetune"]["mean"] - arms["scratch"]["mean"]
        key = f"{int(fraction * 100)}% x {epochs} epochs"
        summary[key] = {**arms, "gap_points": 100 * gap}
        for arm in ("finetune", "scratch"):
            a = arms[arm]
            table.append([f"{int(fraction * 100)} % ({a['runs'][0]['epochs']} epochs)", arm,
                          " / ".join(f"{100 * r['final_val_acc']:.2f}" for r in a["runs"]),
                          f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f}",
                          " / ".join("-" if e is None else str(e) for e in a["epochs_to_97"]),
                          f"{sum(r['wall_seconds'] for r in a['runs']):.0f}"])
        rows.append(f"{key}: fine-tuned minus scratch = {100 * gap:+.2f} points")
    markdown = markdown_table(["digits train split", "start", "final top-1 % (seeds 0/1/2)", "mean ± std",
                               "epoch reaching 97 % (seeds 0/1/2)", "wall s (3 runs)"], table)
    payload = {
        "pretrain": {"command": json.loads((pre / "wall.json").read_text())["command"],
                     "wall_seconds": json.loads((pre / "wall.json").read_text())["wall_seconds"],
                     "final_test_acc": pre_records[-1]["val_acc"], "epochs": len(pre_records),
                     "data": "Fashion-MNIST (/usr/share/datasets/fashion-mnist), "
                             f"{args.pretrain_fraction:g} of the 60,000 training images, stratified, seed 0"},
        "finetune_data": "scikit-learn digits, fixed stratified 80/20 split (1,437 train / 360 held-out), 28 px",
        "target": TARGET,
        "results": summary,
        "gaps": rows,
        "markdown": markdown,
        "machine": machine_info(__import__("torch").device("cpu")),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "transfer")
    parser.add_argument("--stages", nargs="+", default=["pretrain", "runs", "report"],
                        choices=["pretrain", "runs", "report"])
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--pretrain-fraction", type=float, default=0.25)
    parser.add_argument("--epochs-full", type=int, nargs="+", default=[8], help="budgets at 100 %%")
    parser.add_argument("--epochs-few", type=int, nargs="+", default=[20, 60], help="budgets at 10 %%")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_cpu.json")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    pretrained = args.root / "pretrain-fmnist"
    if "pretrain" in args.stages:
        pretrained = pretrain(args.root, args)
    if "runs" in args.stages:
        finetune_and_scratch(args.root, pretrained, args)
    if "report" in args.stages:
        payload = report(args.root, args)
        payload["script_seconds"] = time.time() - start
        payload["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        write_json(args.json, payload)
        print(payload["markdown"])
        print("\n".join(payload["gaps"]))


if __name__ == "__main__":
    main()
