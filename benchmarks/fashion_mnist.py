"""Fashion-MNIST evidence for docs/RESULTS.md: BoTNet vs its ResNet twin, position-encoding ablation, resolution.

Every run is ``botnet train -c RECIPE --seed S --out ROOT/NAME-sS`` (one process
at a time, timed from outside with the wall clock), so the numbers are what a
user gets from the shipped recipes:

* ``main``: ``configs/fashion_mnist_cpu.yaml`` (BoTNet) and
  ``configs/fashion_mnist_cpu_resnet.yaml`` (its ResNet twin: c5's attention
  replaced by a 3x3 convolution, the same recipe) for every seed;
* ``ablation``: the BoTNet recipe with ``--model-kwargs pos_emb=absolute`` and
  ``pos_emb=none`` for the first seed (``relative`` is the main run of that
  seed); with ``--ablation-epochs E``, all three encodings as new runs of E
  epochs (a shorter proxy, the schedule fitted to E);
* ``budget`` (only when asked for): the BoTNet recipe of the first seed scheduled
  for ``--budget-epochs`` epochs (the cosine fitted to them), to find the budget
  at which ``--target`` test top-1 is reached; the report gives the first epoch
  of that curve at the target and the trainer's seconds up to it;
* ``evaluate``: every finished run's *last* checkpoint (the final epoch: no
  selection on the test set, which is Fashion-MNIST's validation split here)
  evaluated at the trained 28 px (per-class accuracy; the top-1 equals the
  run's final-epoch number) and, without retraining, at 24 and 32 px.

A run directory that already holds a finished run (all epochs in
``metrics.jsonl``, ``last.safetensors`` and the timing file ``wall.json``) is
reused, so an interrupted benchmark continues where it stopped; an unfinished
one is started again, so that every wall time is one uninterrupted run's. The report
(JSON, markdown tables, a PNG of the curves) is written from the run
directories alone.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fashion_mnist.py               # 3 + 3 seeds, ablation, eval (~2.5 h on 2 cores)
    python benchmarks/fashion_mnist.py --stages evaluate report --root runs/fmnist  # report on finished runs
    python benchmarks/fashion_mnist.py --train-args="--epochs 1"              # a shorter proxy of the same recipes
    python benchmarks/fashion_mnist.py --stages ablation report --ablation-epochs 3
    python benchmarks/fashion_mnist.py --stages budget report --budget-epochs 24   # when is 94 % reached?
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = common.ROOT
RECIPES = {"botnet": "configs/fashion_mnist_cpu.yaml", "resnet": "configs/fashion_mnist_cpu_resnet.yaml"}
ABLATION = ("relative", "absolute", "none")  # MHSA2d's pos_emb values; the recipe's is relative
STAGES = ("main", "ablation", "budget", "evaluate", "report")
DEFAULT_STAGES = ("main", "ablation", "evaluate", "report")  # the budget run is long: only when asked for
EVAL_SIZES = (24, 32)


def _run_name(model: str, seed: int, variant: str | None = None) -> str:
    return f"{model}-s{seed}" if variant is None else f"{model}-{variant}-s{seed}"


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def finished(run: Path) -> bool:
    """True when ``run`` holds a complete, timed run: every configured epoch, the last checkpoint, wall.json."""
    try:
        epochs = json.loads((run / "config.json").read_text())["settings"]["epochs"]
    except (OSError, ValueError, KeyError):
        return False
    return len(_metrics(run)) == epochs and (run / "last.safetensors").is_file() and (run / "wall.json").is_file()


def train(run: Path, recipe: str, seed: int, extra: list[str]) -> None:
    """``botnet train -c recipe --seed seed --out run [extra]`` in its own process; wall time to run/wall.json."""
    if finished(run):
        print(f"{run.name}: finished before, reused")
        return
    cmd = [sys.executable, "-m", "botnet", "train", "-c", str(ROOT / recipe), "--seed", str(seed),
           "--out", str(run), "--no-progress", *extra]  # fmt: skip
    if run.exists():  # an interrupted run: start again, so that its wall time is one uninterrupted run's
        shutil.rmtree(run)
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    print(f"{run.name}: {shlex.join(cmd[1:])}", flush=True)
    before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    payload = {"wall_s": wall, "command": shlex.join(["botnet", *cmd[3:]]),
               "load_before": before, "load_after": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    (run / "wall.json").write_text(json.dumps(payload, indent=2) + "\n")


def evaluate(run: Path) -> dict:
    """The last checkpoint at 28 px (per class) and at each of EVAL_SIZES; cached in run/eval.json."""
    cache = run / "eval.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from botnet.classification.evaluate import evaluate_checkpoint

    last = str(run / "last.safetensors")
    data_dir = json.loads((run / "config.json").read_text())["settings"].get("data_dir")  # the run's own data
    trained = evaluate_checkpoint(last, data_dir=data_dir, confusion_png=str(run / "confusion-last.png"))
    result = {
        "img_size": trained["img_size"],
        "top1": trained["top1"],
        "per_class_accuracy": trained["per_class_accuracy"],
        "sizes": {},
    }
    for size in EVAL_SIZES:
        other = evaluate_checkpoint(last, data_dir=data_dir, img_size=size, confusion_png=str(run / f"confusion-last-{size}px.png"))
        result["sizes"][str(size)] = other["top1"]
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def describe(run: Path) -> dict:
    """One run's row: final-epoch test top-1, wall time, training speed, the evaluations if present."""
    records = _metrics(run)
    config = json.loads((run / "config.json").read_text())
    wall = json.loads((run / "wall.json").read_text())
    row = {
        "run": run.name,
        "model": config["settings"]["model"],
        "seed": config["settings"]["seed"],
        "epochs": len(records),
        "final_top1": records[-1]["val_acc"],
        "curve": [r["val_acc"] for r in records],
        "train_loss": [r["train_loss"] for r in records],
        "train_img_per_s": statistics.mean(r["train_images_per_second"] for r in records),
        "training_s": records[-1]["elapsed_seconds"],
        "elapsed": [r["elapsed_seconds"] for r in records],
        "wall_s": wall["wall_s"],
        "command": wall["command"],
        "load_before": wall.get("load_before"),  # absent for a run timed by hand
    }
    if (run / "eval.json").is_file():
        row["eval"] = json.loads((run / "eval.json").read_text())
    return row


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: dict[str, dict], seeds: list[int]) -> dict:
    """Per model: mean and sample standard deviation of the final top-1 over seeds, worst wall time."""
    summary = {}
    for model in RECIPES:
        done = [rows[n] for n in (_run_name(model, s) for s in seeds) if n in rows]
        if not done:
            continue
        mean, std = _mean_std([r["final_top1"] for r in done])
        summary[model] = {
            "model": done[0]["model"],
            "seeds": [r["seed"] for r in done],
            "final_top1_mean": mean,
            "final_top1_std": std,
            "wall_s_max": max(r["wall_s"] for r in done),
            "train_img_per_s_mean": statistics.mean(r["train_img_per_s"] for r in done),
        }
        evals = [r["eval"] for r in done if "eval" in r]
        if evals:
            classes = list(evals[0]["per_class_accuracy"])
            summary[model]["per_class_mean"] = {c: statistics.mean(e["per_class_accuracy"][c] for e in evals) for c in classes}
            sizes = {str(evals[0]["img_size"][0]): [e["top1"] for e in evals]}
            sizes.update({size: [e["sizes"][size] for e in evals] for size in evals[0]["sizes"]})
            summary[model]["sizes_mean"] = {size: statistics.mean(values) for size, values in sizes.items()}
            summary[model]["evaluated_seeds"] = len(evals)
    return summary


def reach(row: dict, target: float) -> dict:
    """Where one run's per-epoch test curve first reaches ``target``: the epoch and the trainer's seconds to it."""
    first = next((i for i, acc in enumerate(row["curve"]) if acc >= target), None)
    return {
        "run": row["run"],
        "epochs": row["epochs"],
        "final_top1": row["final_top1"],
        "target": target,
        "first_epoch_at_target": None if first is None else first + 1,
        "training_s_to_target": None if first is None else row["elapsed"][first],
        "epoch_s_mean": row["training_s"] / row["epochs"],
    }


def markdown(rows: dict[str, dict], summary: dict, ablation: list[tuple[str, str]], budget: dict | None = None) -> str:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    out = ["### Runs (final epoch, test set)\n"]
    out.append(common.markdown_table(
        ["run", "model", "epochs", "final top-1 %", "train img/s", "training s", "wall s", "load before"],
        [[r["run"], r["model"], str(r["epochs"]), pct(r["final_top1"]), f"{r['train_img_per_s']:.0f}",
          f"{r['training_s']:.0f}", f"{r['wall_s']:.0f}",
          "-" if r["load_before"] is None else f"{r['load_before']:.2f}"] for r in rows.values()],
    ))  # fmt: skip
    out.append("\n### BoTNet vs ResNet twin (mean +- sample std over seeds)\n")
    out.append(common.markdown_table(
        ["recipe", "model", "seeds", "final top-1 %", "std", "max wall s", "train img/s"],
        [[name, s["model"], ",".join(map(str, s["seeds"])), pct(s["final_top1_mean"]), pct(s["final_top1_std"]),
          f"{s['wall_s_max']:.0f}", f"{s['train_img_per_s_mean']:.0f}"] for name, s in summary.items()],
    ))  # fmt: skip
    with_classes = [name for name, s in summary.items() if "per_class_mean" in s]
    if with_classes:
        classes = list(summary[with_classes[0]]["per_class_mean"])
        out.append("\n### Per-class test accuracy (mean over seeds, last checkpoint, %)\n")
        out.append(common.markdown_table(
            ["class", *with_classes],
            [[c, *(pct(summary[m]["per_class_mean"][c]) for m in with_classes)] for c in classes],
        ))  # fmt: skip
        out.append("\n### Other input sizes, no retraining (mean over seeds, %)\n")
        sizes = list(summary[with_classes[0]]["sizes_mean"])  # the trained size first
        out.append(common.markdown_table(
            ["model", "seeds", *(f"{s} px" for s in sizes)],
            [[summary[m]["model"], str(summary[m]["evaluated_seeds"]),
              *(pct(summary[m]["sizes_mean"][s]) for s in sizes)] for m in with_classes],
        ))  # fmt: skip
    ablation_rows = [(p, rows[n]) for p, n in ablation if n in rows]
    if len(ablation_rows) > 1:
        out.append("\n### Position encoding (BoTNet recipe, one seed)\n")
        out.append(common.markdown_table(
            ["pos_emb", "run", "epochs", "final top-1 %", "train img/s"],
            [[p, r["run"], str(r["epochs"]), pct(r["final_top1"]), f"{r['train_img_per_s']:.0f}"]
             for p, r in ablation_rows],
        ))  # fmt: skip
    if budget is not None:
        b = budget
        reached = "not reached" if b["first_epoch_at_target"] is None else str(b["first_epoch_at_target"])
        seconds = "-" if b["training_s_to_target"] is None else f"{b['training_s_to_target']:.0f}"
        out.append(f"\n### Longer schedule: when is {pct(b['target'])} % reached? (BoTNet recipe, one seed)\n")
        out.append(common.markdown_table(
            ["run", "epochs", "final top-1 %", f"first epoch >= {pct(b['target'])} %", "training s to it", "s per epoch"],
            [[b["run"], str(b["epochs"]), pct(b["final_top1"]), reached, seconds, f"{b['epoch_s_mean']:.0f}"]],
        ))  # fmt: skip
    return "".join(out)


def plot(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"botnet": "tab:red", "resnet": "tab:blue"}
    others = iter(["tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive", "tab:cyan", "gray"] * 4)
    for row in rows.values():
        main_run = row["run"].count("-") == 1  # "botnet-s0"; ablation and budget runs carry a variant
        color = colors.get(row["run"].split("-")[0], "gray") if main_run else next(others)
        epochs = range(1, len(row["curve"]) + 1)
        kwargs = {"color": color, "linestyle": "-" if main_run else ":", "label": row["run"], "alpha": 0.8}
        acc_ax.plot(epochs, [100 * v for v in row["curve"]], **kwargs)
        loss_ax.plot(epochs, row["train_loss"], **kwargs)
    acc_ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="Fashion-MNIST test top-1 after each epoch")
    loss_ax.set(xlabel="epoch", ylabel="train loss (label-smoothed)", title="training loss")
    acc_ax.legend(fontsize=7)
    acc_ax.grid(alpha=0.3)
    loss_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "fmnist", help="run directories go here")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(DEFAULT_STAGES))
    parser.add_argument("--train-args", default="", help="more `botnet train` flags for every run (quoted)")
    parser.add_argument("--ablation-epochs", type=int, default=None,
                        help="run the three position encodings anew for this many epochs (default: the recipe's, "
                        "relative = the first seed's main run)")  # fmt: skip
    parser.add_argument("--budget-epochs", type=int, default=24, help="the budget stage's schedule length")
    parser.add_argument("--target", type=float, default=0.94, help="the test top-1 the budget stage looks for")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fashion_mnist_cpu.json")
    args = parser.parse_args(argv)
    extra = shlex.split(args.train_args)
    args.root.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:  # interleaved, so an interrupted benchmark has both models for the first seeds
        for model, recipe in RECIPES.items():
            runs.append((args.root / _run_name(model, seed), recipe, seed, extra))
    seed, epochs = args.seeds[0], args.ablation_epochs
    ablation = []  # (pos_emb, run) pairs, and the runs the ablation stage trains
    for pos_emb in ABLATION:
        if epochs is None and pos_emb == "relative":
            ablation.append((pos_emb, runs[0]))  # the recipe as it is: the first seed's main BoTNet run
            continue
        variant = pos_emb if epochs is None else f"{pos_emb}-e{epochs}"
        more = [] if epochs is None else ["--epochs", str(epochs)]
        run = (args.root / _run_name("botnet", seed, variant), RECIPES["botnet"], seed,
               [*extra, *more, "--model-kwargs", f"pos_emb={pos_emb}"])  # fmt: skip
        ablation.append((pos_emb, run))
    budget = (args.root / _run_name("botnet", seed, f"e{args.budget_epochs}"), RECIPES["botnet"], seed,
              [*extra, "--epochs", str(args.budget_epochs)])  # fmt: skip
    if "main" in args.stages:
        for run in runs:
            train(*run)
    if "ablation" in args.stages:
        for _, run in ablation:
            if run not in runs:
                train(*run)
    if "budget" in args.stages:
        train(*budget)
    candidates = [run[0] for run in runs] + [run[0] for _, run in ablation if run not in runs] + [budget[0]]
    done = [path for path in candidates if finished(path)]
    if "evaluate" in args.stages:
        for run in runs:  # main runs only; the ablation needs the final number alone
            if finished(run[0]):
                evaluate(run[0])
    if "report" not in args.stages:
        return
    rows = {run.name: describe(run) for run in done}
    summary = summarize(rows, args.seeds)
    longer = reach(rows[budget[0].name], args.target) if budget[0].name in rows else None
    import torch

    payload = {"machine": common.machine_info(torch.device("cpu")), "summary": summary, "budget": longer, "runs": rows}
    common.write_json(args.out, payload)
    table = markdown(rows, summary, [(p, run[0].name) for p, run in ablation], longer)
    args.out.with_suffix(".md").write_text(table)
    if rows:
        plot(rows, args.out.with_suffix(".png"))
    print(table)
    print(f"wrote {args.out} (.md, .png)")


if __name__ == "__main__":
    main()
