"""Shared test set-up: a fixed seed for every test, one torch thread where a module asks, the environment
of the `botnet` subprocesses that tests start, and the check that a run directory describes one epoch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Their tensors are tiny: with several threads, synchronisation costs more than the work (5x slower on a
    busy 2-core machine). Restored for the other modules.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a `botnet` subprocess: this checkout's package first, one OpenMP thread (the same
    thread count in every process: bit-identical CPU results), plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_metrics(run: Path) -> list[dict]:
    """``run``'s metrics.jsonl records, as readers see them (the committed file, also after a kill)."""
    from botnet.runtime.store import committed_path

    return [json.loads(line) for line in committed_path(run / "metrics.jsonl").read_text().splitlines()]


def committed_epoch(run: Path) -> int | None:
    """Assert that every reader sees one epoch: last.pt, last.safetensors, metrics.jsonl and the manifest; best.*
    as last.pt and the manifest say. Returns that epoch (None: nothing was committed)."""
    from botnet.runtime.store import load_checkpoint, read_manifest, read_safetensors

    manifest = read_manifest(run)
    if manifest is None:
        assert not (run / "last.pt").exists()
        return None
    epoch = manifest["epoch"]
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == epoch
    assert [r["epoch"] for r in run_metrics(run)] == list(range(1, epoch + 1))
    weights, _ = read_safetensors(run / "last.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in last["model"].items())
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == last["best_epoch"] == manifest["files"]["best.pt"]["epoch"]
    best_weights, _ = read_safetensors(run / "best.safetensors")
    assert all(torch.equal(best_weights[k], v) for k, v in best["model"].items())
    return epoch
