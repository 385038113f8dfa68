"""Measuring helpers shared by the benchmark scripts: timing, peak memory, machine.

Peak memory is the growth of the process's peak resident set (CPU) or of
``torch.cuda.max_memory_allocated`` (CUDA) over a baseline taken after the
model and inputs exist, so it counts what one step allocates: activations,
saved tensors, gradients, temporaries. On CPU each measurement runs in its
own process, with glibc told to return large blocks to the OS when freed
(``MALLOC_MMAP_THRESHOLD_``), so that RSS follows live memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "src" / "botnet").is_dir():  # benchmark the checkout this script sits in
    sys.path.insert(0, str(ROOT / "src"))

MIB = 1 << 20
# Fixed mmap threshold: blocks over 128 KiB are mmapped and unmapped on free.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


class PeakMemory:
    """Peak memory growth of the code run between ``start()`` and ``stop()`` (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        # Reset the kernel's high-water mark (Linux >= 4.0), then start from the current RSS.
        Path("/proc/self/clear_refs").write_text("5")
        self.base = _status_kib("VmRSS") * 1024

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _status_kib("VmHWM") * 1024 - self.base


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_then_times(step: Callable[[], None], device: torch.device, steps: int) -> tuple[int, list[float]]:
    """Peak memory growth of one call of ``step`` (bytes), then the seconds of ``steps`` more calls.

    The caller warms up first; memory is measured on its own call so that the
    timed calls are not slowed by the meter.
    """
    meter = PeakMemory(device)
    meter.start()
    step()
    peak = meter.stop()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return peak, times


def time_interleaved(
    steps: dict[str, Callable[[], None]],
    device: torch.device,
    repeat: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each step, alternating between them on every round.

    Interleaving spreads slow phases of a shared machine over all contenders
    instead of penalising whichever ran during them. On a machine shared with
    other work, the best round estimates the uncontended time. ``clock`` is
    wall-clock time by default; ``time.process_time`` (CPU seconds of this
    process, all its threads) counts only the cycles the step got, which on
    an oversubscribed CPU is the steadier measure of work (with one thread,
    so that no time goes to threads waiting on each other).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            sync(device)
            start = clock()
            step()
            sync(device)
            times[name].append(clock() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_worker(script: Path, args: list[str], timeout: float = 600, env: dict | None = None) -> dict:
    """Run ``script --worker ...`` in a fresh process; it prints one JSON line last.

    ``env``: variables to set instead of :data:`WORKER_ENV` (``{}``: glibc's own allocation policy, e.g.
    for throughput of code that allocates large buffers per item, which a fixed mmap threshold slows).
    """
    env = {**os.environ, **(WORKER_ENV if env is None else env)}
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"worker exit {proc.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1])


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "device": str(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser: ``--device`` and the hidden ``--worker`` that marks a measuring subprocess."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def device_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """``args.device``, or a parser error if it names CUDA and there is none."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is available")
    return device


def results_path(name: str, device: torch.device) -> Path:
    """Default JSON path: ``benchmarks/results/<name>_<device type>.json``."""
    return ROOT / "benchmarks" / "results" / f"{name}_{device.type}.json"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (first column left-aligned, the rest right)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------- ImageNet-like photos

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def photo_folder(root: Path, classes: int, per_class: int, size: tuple[int, int] = (500, 375),
                 split: str = "train", quality: int = 90) -> Path:
    """``root/<split>/<class>/*.JPEG``: ImageNet-like JPEGs (``size`` = (W, H)) cut from real photographs.

    Each image is a random crop (10-100 % of the side, any aspect ratio in
    3/4..4/3) of one of scikit-image's sample photographs, resized to
    ``size`` and saved at JPEG quality ``quality`` (ImageNet's are ~500x375,
    quality ~90, ~110 KB): real texture and edges, as a decoder and a
    resampler see in practice, not noise (which compresses and decodes
    differently). Deterministic (seed 0); kept if already complete.
    """
    import numpy as np
    from PIL import Image
    from skimage import data

    target = root / split
    done = root / f".{split}.complete"  # beside the split, not in it (no stray file among the classes)
    if done.is_file() and done.read_text() == f"{classes} {per_class} {size} {quality}":
        return root
    sources = []
    for name in PHOTOS:
        try:
            photo = np.asarray(getattr(data, name)())
        except Exception:  # a sample that this scikit-image fetches from the network
            continue
        if photo.ndim == 3 and photo.shape[2] >= 3:
            sources.append(Image.fromarray(np.ascontiguousarray(photo[..., :3])))
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = target / f"class{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo = sources[int(rng.integers(len(sources)))]
            w, h = photo.size
            side = rng.uniform(0.1, 1.0) * min(w, h)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = min(w, int(side * ratio ** 0.5)), min(h, int(side / ratio ** 0.5))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(folder / f"img{i:05d}.JPEG", quality=quality)
    done.write_text(f"{classes} {per_class} {size} {quality}")
    return root
