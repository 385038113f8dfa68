"""How the start of a run grows with the dataset: `botnet train` on 500 vs 5,000 JPEGs, one 64-image epoch.

Builds two ImageFolder trees of ImageNet-like JPEGs (about 500x375, cut from
scikit-image's sample photographs, :func:`common.photo_folder`): ``train/``
with ``--small`` and ``--large`` images (10 classes), and the same small
``val/`` in both (the validation set is the same work in both runs, as
ImageNet's 50,000 are whatever the training set). Then times the whole
command, start to exit, with the same settings and ``--epoch-size 64``:

    botnet train --dataset folder --data-dir D --model resnet_tiny --img-size 64 --batch-size 32 \\
        --epoch-size 64 --epochs 1 --no-progress --out TMP

once per repeat for each size, interleaved (small, large, small, ...), and
reports the median wall time and the large / small ratio (target <= 1.5),
and the same for the CPU time of the command and its children (what the
machine's other load disturbs least).
The same pair with ``--scan-images`` (decode every file before training,
what every start did before) shows what the default no longer pays.

Writes ``benchmarks/results/start_time_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine_info, markdown_table, median, photo_folder, write_json

import torch

CLASSES = 10
VAL_PER_CLASS = 5


def make_tree(root: Path, per_class: int, val: Path) -> Path:
    """``root/train`` (``per_class`` x 10 JPEGs) and ``root/val`` (a link to the shared small val tree)."""
    photo_folder(root, CLASSES, per_class)
    if not (root / "val").exists():
        (root / "val").symlink_to(val / "val", target_is_directory=True)
    return root


def time_command(data_dir: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children) of one run."""
    out = Path(tempfile.mkdtemp(prefix="botnet-start-")) / "run"
    command = [sys.executable, "-m", "botnet", "train", "--dataset", "folder", "--data-dir", str(data_dir),
               "--model", "resnet_tiny", "--img-size", "64", "--batch-size", "32", "--epoch-size", "64",
               "--epochs", "1", "--no-progress", "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shutil.rmtree(out.parent, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"botnet train failed: {proc.stderr.strip().splitlines()[-1:]}")
    return seconds, cpu


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=500, help="training images of the small tree")
    parser.add_argument("--large", type=int, default=5000, help="training images of the large tree")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "botnet-start-time",
                        help="where the trees are built (kept for the next run)")
    parser.add_argument("--no-scan", action="store_true", help="skip the --scan-images pair")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "start_time_cpu.json")
    args = parser.parse_args(argv)

    val = args.work / "val-tree"
    photo_folder(val, CLASSES, VAL_PER_CLASS, split="val")
    trees = {n: make_tree(args.work / f"train-{n}", n // CLASSES, val) for n in (args.small, args.large)}
    modes = {"default (decode when read)": []} if args.no_scan else {
        "default (decode when read)": [], "--scan-images (decode all first)": ["--scan-images"]}
    rows, results = [], []
    for mode, extra in modes.items():
        times: dict[int, list[float]] = {n: [] for n in trees}
        cpu: dict[int, list[float]] = {n: [] for n in trees}
        for _ in range(args.repeat):
            for n, tree in trees.items():  # interleaved: drift of the machine hits both sizes alike
                wall, used = time_command(tree, extra)
                times[n].append(wall)
                cpu[n].append(used)
        small, large = median(times[args.small]), median(times[args.large])
        cpu_small, cpu_large = median(cpu[args.small]), median(cpu[args.large])
        ratio = large / small
        results.append({"mode": mode, "flags": extra, "wall_s": {str(n): t for n, t in times.items()},
                        "cpu_s": {str(n): t for n, t in cpu.items()},
                        "median_small_s": small, "median_large_s": large, "ratio": ratio,
                        "median_small_cpu_s": cpu_small, "median_large_cpu_s": cpu_large,
                        "cpu_ratio": cpu_large / cpu_small,
                        "target": 1.5 if not extra else None, "hit": ratio <= 1.5 if not extra else None})
        rows.append([mode, f"{small:.2f}", f"{large:.2f}", f"{ratio:.2f}", f"{cpu_small:.2f}", f"{cpu_large:.2f}",
                     f"{cpu_large / cpu_small:.2f}",
                     ("HIT" if ratio <= 1.5 else "MISS") + " (<= 1.5)" if not extra else "-"])
        print(f"{mode}: {args.small} files {small:.2f} s, {args.large} files {large:.2f} s, ratio {ratio:.2f} "
              f"(CPU {cpu_small:.2f} s vs {cpu_large:.2f} s)")
    header = ["mode", f"{args.small} files (s)", f"{args.large} files (s)", "ratio", f"{args.small} CPU (s)",
              f"{args.large} CPU (s)", "CPU ratio", "target (wall)"]
    table = markdown_table(header, rows)
    print(table)
    payload = {"machine": machine_info(torch.device("cpu")), "small": args.small, "large": args.large,
               "val_images": CLASSES * VAL_PER_CLASS, "repeat": args.repeat, "results": results}
    write_json(args.out, payload)
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
