"""A run directory is always consistent: file sets, recovery, permissions, kills at any moment, exact resume."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import committed_epoch, run_metrics
from conftest import subprocess_env as _env

from botnet.checkpoint import load_model
from botnet.runtime.store import (
    MANIFEST,
    committed_path,
    load_checkpoint,
    read_manifest,
    read_safetensors,
    recover_file_set,
    write_file_set,
)


def _text(value: str):
    return lambda tmp: tmp.write_text(value)


# --------------------------------------------------------------------------- file sets


def test_a_kill_between_commit_and_renames_is_finished_and_readers_follow_the_manifest(tmp_path, monkeypatch):
    write_file_set(tmp_path, {"a.txt": _text("a1"), "b.txt": _text("b1")}, {"epoch": 1})
    real_replace = os.replace
    renamed: list[str] = []

    def dying_replace(src, dst):  # the process "dies" after the commit and one rename
        if Path(dst).name == "b.txt":
            raise KeyboardInterrupt("killed")
        renamed.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        write_file_set(tmp_path, {"a.txt": _text("a2"), "b.txt": _text("b2")}, {"epoch": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert renamed == [MANIFEST, "a.txt"]  # committed, then a.txt renamed; b.txt still under its temporary name
    assert (tmp_path / "b.txt").read_text() == "b1"  # the file itself is stale...
    assert committed_path(tmp_path / "b.txt").read_text() == "b2"  # ...but readers follow the manifest
    assert read_manifest(tmp_path)["epoch"] == 2
    assert recover_file_set(tmp_path) == []  # rolled forward, nothing uncommitted to delete
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["a2", "b2"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert "pending" not in read_manifest(tmp_path)


def test_a_kill_before_the_commit_leaves_the_previous_set(tmp_path):
    write_file_set(tmp_path, {"a.txt": _text("a1"), "b.txt": _text("b1")}, {"epoch": 1})

    def crash(tmp):
        tmp.write_text("partial")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        write_file_set(tmp_path, {"a.txt": _text("a2"), "b.txt": crash}, {"epoch": 2})
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["a1", "b1"]
    assert read_manifest(tmp_path)["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # A SIGKILL leaves its temporaries: the next start removes them.
    (tmp_path / ".a.txt.x1y2.tmp").write_text("orphan")
    assert recover_file_set(tmp_path) == [".a.txt.x1y2.tmp"]


def test_files_of_earlier_sets_keep_their_epoch(tmp_path):
    write_file_set(tmp_path, {"best.pt": _text("1"), "last.pt": _text("1")}, {"epoch": 1})
    manifest = write_file_set(tmp_path, {"last.pt": _text("2")}, {"epoch": 2})
    assert manifest["files"] == {"best.pt": {"epoch": 1}, "last.pt": {"epoch": 2}}


# --------------------------------------------------------------------------- whole runs

TRAIN = [sys.executable, "-m", "botnet", "train", "--img-size", "8", "--batch-size", "128", "--no-progress",
         "--ema", "--ema-decay", "0.9"]


KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "raw_val_acc")


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in KEYS} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run([*TRAIN, "--epochs", "5", "--out", str(run)], check=True, capture_output=True, env=_env())
    return run


def test_every_file_of_a_run_gets_the_same_mode(reference):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in reference.iterdir()}
    assert {"config.json", "metrics.jsonl", "manifest.json", "last.pt", "last.safetensors", "best.pt",
            "best.safetensors"} <= set(modes)
    assert len(set(modes.values())) == 1, modes
    assert not [name for name in modes if name.endswith(".tmp")]
    assert committed_epoch(reference) == 5


@pytest.mark.slow
def test_kills_at_random_moments_leave_consistent_runs_that_resume_exactly(reference, tmp_path):
    """SIGKILL the run at random moments (during epochs, evaluation and file writes), check the
    directory after each kill, resume, and compare the finished run with the uninterrupted one."""
    run = tmp_path / "run"
    rng = random.Random(0)
    kills = 0
    command = [*TRAIN, "--epochs", "5", "--out", str(run)]
    while True:
        resume = (run / "last.pt").exists()
        argv = [*TRAIN[:4], "--resume", str(run)] if resume else command
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        # Start-up takes about a second; epochs are ~0.3 s at this size on an idle machine.
        deadline = time.monotonic() + rng.uniform(0.8, 4.0)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None and kills < 4:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            committed_epoch(run)
            continue
        assert process.wait(timeout=300) == 0
        break
    assert committed_epoch(run) == 5
    assert _deterministic(run_metrics(run)) == _deterministic(run_metrics(reference))
    resumed, _ = load_model(run / "last.safetensors")
    uninterrupted, _ = load_model(reference / "last.safetensors")
    for (name, a), b in zip(resumed.state_dict().items(), uninterrupted.state_dict().values()):
        assert torch.equal(a, b), name
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- detection resumes exactly

DETECT = [
    sys.executable, "-m", "botnet", "detect", "train", "--backbone", "botnet_tiny", "--returned-layers", "2", "3",
    "4", "--fpn-channels", "16", "--box-head-size", "32", "--mask-head-channels", "8", "--box-batch-size", "32",
    "--rpn-post-nms-train", "100", "--min-size", "64", "--max-size", "80", "--batch-size", "4", "--opt", "adamw",
    "--lr", "0.002", "--warmup-epochs", "0.5", "--no-progress",
]


def test_a_killed_detection_run_resumes_to_the_samerun_metrics(tmp_path):
    pytest.importorskip("pycocotools")
    from botnet.detection.data import make_synthetic_shapes

    data = tmp_path / "data"
    make_synthetic_shapes(data, {"train": 8, "val": 4}, min_size=64, max_size=80, max_objects=2, seed=1)
    recipe = ["--data", str(data), "--epochs", "3"]
    reference = tmp_path / "reference"
    subprocess.run([*DETECT, *recipe, "--out", str(reference)], check=True, capture_output=True, env=_env())

    killed = tmp_path / "killed"
    process = subprocess.Popen([*DETECT, *recipe, "--out", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 300
    while read_manifest(killed) is None if killed.exists() else True:
        assert process.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    done = load_checkpoint(killed / "last.pt")["epoch"]
    assert 1 <= done < 3
    subprocess.run([*DETECT[:5], "--resume", str(killed)], check=True, capture_output=True, env=_env())

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if "second" not in k} for r in run_metrics(run)]

    assert records(killed) == records(reference)
    a, _ = read_safetensors(killed / "last.safetensors")
    b, _ = read_safetensors(reference / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
