"""Shared test set-up: a fixed seed for every test, one torch thread where a module asks, and the environment
of the `botnet` subprocesses that tests start."""

from __future__ import annotations

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
