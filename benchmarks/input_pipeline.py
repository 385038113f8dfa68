"""Input-pipeline throughput on CPU: our folder and shard loaders vs timm's and torchvision's, and the levers.

Data: ImageNet-like JPEGs (``--classes`` x ``--per-class``, 500x375, cut from
scikit-image's sample photographs, see ``common.photo_folder``) in
``train/<class>/`` (plus a small ``val/``), cached under ``--work``, and the
same files packed as tar shards by :func:`botnet.classification.shards.pack_folder`.

Loaders (all: ImageNet training transforms at 224 px: random-resized crop,
scale (0.08, 1), ratio (3/4, 4/3), bilinear with antialiasing, horizontal
flip, float + ImageNet mean/std; batch ``--batch``; CPU only):

* ``folder``: ours, ``build_data("folder", ...)``'s training split (our
  ``read_image`` + torchvision v2 on uint8 tensors), in a DataLoader;
* ``shards``: ours, :class:`ShardDataset` over the packed shards (same
  decoding and transforms), through :func:`shard_loader`;
* ``timm``: ``timm.data.create_dataset`` + ``create_loader`` (is_training,
  no auto-augment, no colour jitter, no random erasing,
  ``use_prefetcher=False``: PIL crop/resize, then ToTensor + Normalize);
* ``torchvision``: ``ImageFolder`` (PIL loader) with transforms v2 on PIL
  images, as torchvision's reference recipe does.

Each (loader, workers) runs in its own process, ``--rounds`` times (best
kept): ``img/s`` counts images after the first batch (worker start-up
excluded) over the time since it; per worker = img/s / workers; and images
per CPU-second of all processes over the same time (steadier on a shared
machine: it counts only the cycles the loader got). Peak memory:
the largest sum, over the main process and its workers, of the proportional
set size (PSS: pages shared by the forked workers count once), sampled every
0.5 s, from psutil if installed, else ``/proc/PID/smaps_rollup``.

Levers (one process, one thread, the same images, per-image times in
interleaved rounds): JPEG decoding by PIL, by our ``read_image`` and by
``torchvision.io.decode_jpeg`` (libjpeg-turbo); PIL ``draft()`` (the JPEG
decoder's DCT scaling: decode at 1/2, 1/4 or 1/8 size when the crop stays
>= the output size; changes pixels, reported as the mean absolute difference
against a full decode with the same crop); transforms v2 on uint8 tensors vs
on PIL images; and, if ``--simd-python`` names an environment with
pillow-simd, the PIL rows again there.

Usage::

    python benchmarks/input_pipeline.py                      # ~6 min on 2 cores
    python benchmarks/input_pipeline.py --simd-python /tmp/simd/bin/python
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

import common  # noqa: I001  (benchmarks/ is on sys.path when run as a script)

SCRIPT = Path(__file__).resolve()
LOADERS = ("folder", "shards", "timm", "torchvision")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
LARGE = (1600, 1200)  # (W, H) of the photos of the draft() lever's second set


# --------------------------------------------------------------------------- memory of a process tree


class TreeMemory:
    """Peak summed PSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        try:
            import psutil

            self.method = "psutil memory_full_info().pss"
            self._psutil = psutil
        except ImportError:
            self.method = "/proc/PID/smaps_rollup Pss"
            self._psutil = None

    def _pss(self) -> int:
        if self._psutil is not None:
            me = self._psutil.Process()
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                    pass
            return total
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
                total += 1024 * int(next(line.split()[1] for line in text.splitlines() if line.startswith("Pss:")))
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, StopIteration, ValueError):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._pss())
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- data and loaders


def prepare(work: Path, classes: int, per_class: int, large_images: int = 30) -> tuple[Path, Path]:
    """The JPEG folder (train/ + a small val/) and its shards (8 per split at least), cached."""
    from botnet.classification.shards import INDEX, pack_folder

    root = common.photo_folder(work / f"photos_{classes}x{per_class}", classes, per_class)
    common.photo_folder(root, classes, 2, split="val")
    common.photo_folder(work / "large_photos", 1, large_images, size=LARGE)  # where draft() can act
    shards = root.parent / f"{root.name}_shards"
    shard_size = max(1, classes * per_class // 8)
    index = shards / INDEX
    if not index.is_file() or json.loads(index.read_text())["shard_size"] != shard_size:
        pack_folder(root, shards, shard_size=shard_size, progress=False)
    return root, shards


def imagenet_v2(pil: bool = False):
    """ImageNet training transforms (torchvision v2); ``pil``: crop and flip on the PIL image, then to tensor."""
    from torchvision.transforms import v2

    crop = v2.RandomResizedCrop(224, scale=SCALE, ratio=RATIO, antialias=True)
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))]
    if pil:
        return v2.Compose([crop, v2.RandomHorizontalFlip(), v2.PILToTensor(), *tail])
    return v2.Compose([crop, v2.RandomHorizontalFlip(), *tail])


def build_loader(name: str, root: Path, shards: Path, workers: int, batch: int):
    loader_args = dict(batch_size=batch, num_workers=workers, shuffle=False)
    if name == "folder":
        from botnet.classification.data import build_data

        data = build_data("folder", data_dir=root, img_size=224, bad_images="skip", workers=2)
        data.train.transform = imagenet_v2()  # the ImageNet recipe's crop scale (our default is (0.35, 1))
        return torch.utils.data.DataLoader(data.train, **{**loader_args, "shuffle": True})
    if name == "shards":
        from botnet.classification.shards import ShardDataset, shard_loader

        dataset = ShardDataset(shards, transform=imagenet_v2(), shuffle=256)
        return shard_loader(dataset, batch_size=batch, num_workers=workers)
    if name == "timm":
        from timm.data import create_dataset, create_loader

        dataset = create_dataset("", root=str(root), split="train", is_training=True)
        return create_loader(dataset, input_size=(3, 224, 224), batch_size=batch, is_training=True,
                             use_prefetcher=False, no_aug=False, scale=SCALE, ratio=RATIO, hflip=0.5,
                             color_jitter=None, auto_augment=None, re_prob=0.0, interpolation="bilinear",
                             mean=MEAN, std=STD, num_workers=workers, device=torch.device("cpu"),
                             persistent_workers=False)  # fmt: skip
    if name == "torchvision":
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(str(root / "train"), transform=imagenet_v2(pil=True))
        return torch.utils.data.DataLoader(dataset, **{**loader_args, "shuffle": True})
    raise ValueError(name)


def _children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's live children (the loader workers)."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
    return total


def measure_loader(args: argparse.Namespace) -> dict:
    """img/s after the first batch (wall clock), and images per CPU-second of all processes over that time.

    The CPU figure counts only the cycles the loader got, so a busy shared
    machine does not lower it as it lowers the wall-clock rate: workers'
    CPU = their total once joined (``RUSAGE_CHILDREN``) minus what they had
    used at the first batch (``/proc/PID/stat``); the main process's from
    ``time.thread_time`` (its loading thread: not the memory sampler's).
    """
    import gc
    import resource

    torch.manual_seed(0)
    root, shards = Path(args.root), Path(args.shards)
    loader = build_loader(args.worker.split(":", 1)[1], root, shards, args.num_workers, args.batch)
    with TreeMemory() as memory:
        start = time.perf_counter()
        batches = iter(loader)
        first = next(batches)
        assert first[0].shape[1:] == (3, 224, 224) and first[0].dtype == torch.float32, first[0].shape
        t0, cpu0, workers0 = time.perf_counter(), time.thread_time(), _children_cpu_s()
        done0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        count = sum(images.shape[0] for images, _ in batches)
        elapsed, main_cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        startup = t0 - start
        del batches  # exhausted: the workers are joined
        gc.collect()
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = (done.ru_utime + done.ru_stime) - (done0.ru_utime + done0.ru_stime) - workers0
    if count == 0:
        raise SystemExit(f"one batch holds every image ({first[0].shape[0]}): nothing left to time; lower --batch")
    cpu = main_cpu + (workers_cpu if args.num_workers else 0.0)
    return {"img_per_s": count / elapsed, "img_per_cpu_s": count / cpu, "cpu_s": cpu, "wall_s": elapsed,
            "images": count + first[0].shape[0], "startup_s": startup, "peak_pss_bytes": memory.peak,
            "memory_method": memory.method}


# --------------------------------------------------------------------------- levers


def lever_rows(args: argparse.Namespace) -> list[dict]:
    """Per-image costs on the same files, one thread, interleaved rounds (best round kept)."""
    import numpy as np
    from PIL import Image
    from torchvision import io as tvio
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    torch.set_num_threads(1)
    root = Path(args.root)
    paths = sorted((root / "train").rglob("*.JPEG"))[: args.lever_images]
    large = sorted((root.parent / "large_photos" / "train").rglob("*.JPEG"))[: args.large_images]
    blobs = [p.read_bytes() for p in paths]
    pil_only = args.pil_only
    rng = np.random.default_rng(0)

    def draw_boxes(files: list[Path]) -> list[tuple[int, int, int, int]]:
        # One random-resized-crop box per image, drawn once: every variant cuts the same box.
        boxes = []
        for path in files:
            with Image.open(path) as im:
                boxes.append(_rrc_box(*im.size, rng))
        return boxes

    boxes, large_boxes = draw_boxes(paths), draw_boxes(large)

    def pil_full():
        for path in paths:
            with Image.open(path) as im:
                im.convert("RGB")

    def pil_crop(draft: bool, files: list[Path] = paths, boxes: list = boxes) -> list:
        out = []
        for path, (x, y, cw, ch) in zip(files, boxes):
            with Image.open(path) as im:
                w0, h0 = im.size
                factor = 1
                while draft and factor < 8 and cw // (2 * factor) >= 224 and ch // (2 * factor) >= 224:
                    factor *= 2  # the largest DCT scaling that keeps the crop >= 224 px on both sides
                if factor > 1:
                    im.draft("RGB", (w0 // factor, h0 // factor))
                sx, sy = w0 / im.size[0], h0 / im.size[1]  # im.size is the reduced size after draft()
                im = im.convert("RGB")
                box = (x / sx, y / sy, (x + cw) / sx, (y + ch) / sy)
                out.append(im.resize((224, 224), Image.BILINEAR, box=box, reducing_gap=None))
        return out

    steps = {"decode: PIL (Image.open + convert RGB)": pil_full,
             "crop+resize: PIL full decode": lambda: pil_crop(False),
             "crop+resize: PIL draft() decode": lambda: pil_crop(True)}  # fmt: skip
    big = f"{LARGE[0]}x{LARGE[1]}"
    if large:
        steps[f"crop+resize {big}: PIL full decode"] = lambda: pil_crop(False, large, large_boxes)
        steps[f"crop+resize {big}: PIL draft() decode"] = lambda: pil_crop(True, large, large_boxes)
    # torchvision.pil_to_tensor returns a channels-last view (a permute): make it contiguous C, H, W here.
    decoded = [TF.pil_to_tensor(Image.open(p).convert("RGB")).contiguous() for p in paths]
    pils = [Image.open(p).convert("RGB") for p in paths]
    on_pil = imagenet_v2(pil=True)
    steps["transforms v2 on PIL images (crop+flip on PIL, then to float)"] = lambda: [on_pil(im) for im in pils]
    if not pil_only:
        from botnet.images import read_image

        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        on_tensor = imagenet_v2()
        steps["decode: botnet read_image (PIL + EXIF + flatten + tensor)"] = lambda: [read_image(p) for p in paths]
        steps["decode: torchvision.io.decode_jpeg (libjpeg-turbo)"] = lambda: [tvio.decode_jpeg(t) for t in tensors]
        strided = [t.permute(1, 2, 0).contiguous().permute(2, 0, 1) for t in decoded]  # channels-last strides
        steps["transforms v2 on uint8 tensors (contiguous C, H, W)"] = lambda: [on_tensor(v2.functional.to_image(t))
                                                                             for t in decoded]
        steps["transforms v2 on uint8 tensors (channels-last, as ours read)"] = lambda: [
            on_tensor(v2.functional.to_image(t)).contiguous() for t in strided]
    times = common.time_interleaved(steps, torch.device("cpu"), repeat=args.lever_rounds, warmup=1)
    rows = []
    for name, t in times.items():
        count = len(large) if big in name else len(paths)
        rows.append({"lever": name, "ms_per_image": 1e3 * min(t) / count, "ms_per_image_median": 1e3 * common.median(t) / count,
                     "images": count})  # fmt: skip
    # What draft() does to the pixels: the same boxes, full decode vs reduced decode.
    for files, file_boxes, tag in ((paths, boxes, None), (large, large_boxes, big)):
        if not files:
            continue
        full, reduced = pil_crop(False, files, file_boxes), pil_crop(True, files, file_boxes)
        diffs = [np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean() for a, b in zip(full, reduced)]
        used = [i for i, (_, _, cw, ch) in enumerate(file_boxes) if cw >= 448 and ch >= 448]
        for row in rows:
            if "draft" in row["lever"] and ((tag is None) == (big not in row["lever"])):
                row["draft_used_fraction"] = len(used) / len(files)
                row["mean_abs_diff_all"] = float(np.mean(diffs))
                row["mean_abs_diff_where_used"] = float(np.mean([diffs[i] for i in used])) if used else 0.0
                row["max_mean_abs_diff"] = float(max(diffs))
    if not pil_only:  # does libjpeg-turbo through torchvision give Pillow's pixels?
        diffs = [(tvio.decode_jpeg(t).int() - read_image(p).int()).abs() for t, p in zip(tensors, paths)]
        for row in rows:
            if "decode_jpeg" in row["lever"]:
                row["identical_to_pil_fraction"] = sum(int(d.max()) == 0 for d in diffs) / len(diffs)
                row["max_abs_diff_vs_pil"] = max(int(d.max()) for d in diffs)
                row["mean_abs_diff_vs_pil"] = float(torch.stack([d.float().mean() for d in diffs]).mean())
    from PIL import features

    for row in rows:
        row["pillow"] = metadata.version("pillow-simd") if _has("pillow-simd") else metadata.version("pillow")
        row["pillow_dist"] = "pillow-simd" if _has("pillow-simd") else "pillow"
        row["pillow_libjpeg_turbo"] = features.version("libjpeg_turbo")
    return rows


def _has(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def _rrc_box(w: int, h: int, rng) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box rule (10 tries, then the centre fallback), with numpy's RNG."""
    import math

    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    cw, ch = w, h
    return 0, 0, cw, ch


# --------------------------------------------------------------------------- driver


def worker(args: argparse.Namespace) -> None:
    if args.worker == "levers":
        print(json.dumps({"levers": lever_rows(args)}))
    else:
        print(json.dumps(measure_loader(args)))


def main(argv: list[str] | None = None) -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/botnet-bench/input_pipeline"),
                        help="cache of the JPEG folder and its shards")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers to measure")
    parser.add_argument("--loaders", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--rounds", type=int, default=2, help="runs per (loader, workers), best kept")
    parser.add_argument("--lever-images", type=int, default=100)
    parser.add_argument("--lever-rounds", type=int, default=3)
    parser.add_argument("--large-images", type=int, default=30, help=f"photos of {LARGE[0]}x{LARGE[1]} for draft()")
    parser.add_argument("--no-levers", dest="levers", action="store_false")
    parser.add_argument("--simd-python", help="python of an environment with pillow-simd: PIL levers again there")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/input_pipeline_cpu.json)")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--num-workers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pil-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    root, shards = prepare(args.work, args.classes, args.per_class, args.large_images)
    base = ["--root", str(root), "--shards", str(shards), "--batch", str(args.batch)]
    rows = []
    for _ in range(args.rounds):  # rounds outermost: a slow phase of the shared machine hits every loader
        for workers in args.workers:
            for name in args.loaders:
                # glibc's default malloc (not WORKER_ENV's fixed mmap threshold, which makes every decoded
                # image an mmap + munmap and slowed every loader here by ~15 %): as a training run allocates.
                result = common.run_worker(SCRIPT, ["--worker", f"loader:{name}", "--num-workers", str(workers), *base],
                                           timeout=args.timeout, env={})  # fmt: skip
                rows.append({"loader": name, "workers": workers, **result})
                status = result.get("error") or f"{result['img_per_s']:.1f} img/s"
                print(f"{name:>12} x{workers}: {status}", file=sys.stderr, flush=True)
    best = {}
    for row in rows:
        key = (row["loader"], row["workers"])
        if "error" in row and key not in best:
            best[key] = row
        elif "error" not in row and ("img_per_s" not in best.get(key, {}) or row["img_per_s"] > best[key]["img_per_s"]):
            same = [r for r in rows if (r["loader"], r["workers"]) == key and "error" not in r]
            best[key] = {**row, "rounds_img_per_s": [r["img_per_s"] for r in same],
                         "rounds_img_per_cpu_s": [r["img_per_cpu_s"] for r in same],
                         # the CPU figure: the best round too (a loaded machine only ever adds cycles)
                         "img_per_cpu_s": max(r["img_per_cpu_s"] for r in same)}
    results = list(best.values())
    for row in results:
        if "img_per_s" in row:
            row["images_per_second_per_worker"] = row["img_per_s"] / row["workers"]
    for row in results:
        timm = best.get(("timm", row["workers"]), {})
        if "img_per_s" in row and "img_per_s" in timm:
            row["per_worker_vs_timm"] = row["img_per_s"] / timm["img_per_s"]
            row["per_cpu_s_vs_timm"] = row["img_per_cpu_s"] / timm["img_per_cpu_s"]

    levers = []
    if args.levers:
        lever_args = ["--worker", "levers", "--root", str(root), "--lever-images", str(args.lever_images),
                      "--lever-rounds", str(args.lever_rounds), "--large-images", str(args.large_images)]  # fmt: skip
        result = common.run_worker(SCRIPT, lever_args, timeout=args.timeout, env={})
        levers = result.get("levers", [{"lever": "levers", "error": result.get("error")}])
        if args.simd_python:
            levers += simd_levers(args.simd_python, lever_args)
        else:
            levers.append({"lever": "pillow-simd", "error": "not measured (no --simd-python given)"})

    targets = []
    for workers in args.workers:
        for ours in ("folder", "shards"):
            row = best.get((ours, workers), {})
            if "per_worker_vs_timm" in row:
                verdict = "HIT" if row["per_worker_vs_timm"] >= 1.0 else "MISS"
                cpu_verdict = "HIT" if row["per_cpu_s_vs_timm"] >= 1.0 else "MISS"
                targets.append(f"ours ({ours}) >= timm img/s per worker at {workers} worker(s): {verdict} "
                               f"({row['per_worker_vs_timm']:.2f}x wall clock); per CPU-second: {cpu_verdict} "
                               f"({row['per_cpu_s_vs_timm']:.2f}x)")
    info = common.machine_info(torch.device("cpu"))
    info.update({name: _version(name) for name in ("torchvision", "timm", "pillow", "webdataset", "psutil")})
    config = {"images": args.classes * args.per_class, "classes": args.classes, "image_size": [500, 375],
              "batch": args.batch, "img_size": 224, "scale": list(SCALE), "ratio": list(RATIO),
              "rounds": args.rounds, "data": str(root), "shards": str(shards)}  # fmt: skip
    out = args.out or common.ROOT / "benchmarks" / "results" / "input_pipeline_cpu.json"
    common.write_json(out, {"machine": info, "config": config, "results": results, "levers": levers,
                            "targets": targets})  # fmt: skip
    out.with_suffix(".md").write_text(markdown(results, levers, targets))
    print_table(results, levers, targets, info)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def simd_levers(python: str, lever_args: list[str]) -> list[dict]:
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(common.ROOT / "src")}
    proc = subprocess.run([python, str(SCRIPT), *lever_args, "--pil-only"], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [{"lever": "pillow-simd", "error": f"{python}: {tail[0][:200]}"}]
    rows = json.loads(lines[-1])["levers"]
    return [{**row, "lever": f"{row['pillow_dist']} {row['pillow']}: {row['lever']}"} for row in rows]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _fmt_mib(value: int | None) -> str:
    return "-" if value is None else f"{value / common.MIB:.0f}"


def _loader_cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["loader"], str(r["workers"]), r["error"][:60], "", "", "", "", "", ""]
    ratio = f"{r['per_worker_vs_timm']:.2f}x" if "per_worker_vs_timm" in r else "-"
    cpu_ratio = f"{r['per_cpu_s_vs_timm']:.2f}x" if "per_cpu_s_vs_timm" in r else "-"
    return [r["loader"], str(r["workers"]), f"{r['img_per_s']:.1f}", f"{r['images_per_second_per_worker']:.1f}", ratio,
            f"{r['img_per_cpu_s']:.1f}", cpu_ratio, _fmt_mib(r.get("peak_pss_bytes")), f"{r['startup_s']:.1f}"]  # fmt: skip


def _lever_cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["lever"], r["error"][:70], "", ""]
    note = ""
    if "max_abs_diff_vs_pil" in r:
        note = (f"identical to PIL's pixels for {100 * r['identical_to_pil_fraction']:.0f}% of images "
                f"(max |diff| {r['max_abs_diff_vs_pil']}, mean {r['mean_abs_diff_vs_pil']:.3f})")
    if "draft_used_fraction" in r:
        note = (f"draft used for {100 * r['draft_used_fraction']:.0f}% of crops; mean |diff| "
                f"{r['mean_abs_diff_where_used']:.2f}/255 where used")
    return [r["lever"], f"{r['ms_per_image']:.2f}", f"{1e3 / r['ms_per_image']:.0f}", note]


LOADER_HEADER = ["loader", "workers", "img/s", "img/s per worker", "per worker vs timm", "img per CPU-s",
                 "per CPU-s vs timm", "peak PSS MiB", "start-up s"]
LEVER_HEADER = ["lever (1 thread, same images)", "ms / image", "img/s", "note"]


def markdown(results: list[dict], levers: list[dict], targets: list[str]) -> str:
    text = common.markdown_table(LOADER_HEADER, [_loader_cells(r) for r in results])
    if levers:
        text += "\n" + common.markdown_table(LEVER_HEADER, [_lever_cells(r) for r in levers])
    return text + "".join(f"\n- {t}" for t in targets) + "\n"


def print_table(results: list[dict], levers: list[dict], targets: list[str], info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    table = Table(title=f"Input pipeline, ImageNet transforms at 224 px, {info['cpu']} x{info['cpu_cores']}")
    for col in LOADER_HEADER:
        table.add_column(col, justify="left" if col == "loader" else "right")
    for r in results:
        table.add_row(*_loader_cells(r))
    console.print(table)
    if levers:
        table = Table(title="Levers")
        for col in LEVER_HEADER:
            table.add_column(col, justify="left" if col in ("lever (1 thread, same images)", "note") else "right")
        for r in levers:
            table.add_row(*_lever_cells(r))
        console.print(table)
    for line in targets:
        console.print(line)


if __name__ == "__main__":
    main()
