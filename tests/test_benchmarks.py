"""The benchmark scripts run end to end (tiny sizes) and their ratios follow from their timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_attention_benchmark_tiny(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("bottleneck_transformer_pytorch")
    out = tmp_path / "attention.json"
    impls = ["ours/auto", "ours/chunked", "timm", "btp", "floor"]
    _run("attention.py", "--sizes", "14:1", "--dim", "16", "--heads", "2", "--dim-head", "8", "--repeat", "1",
         "--impls", *impls, "--out", str(out), cwd=tmp_path)  # fmt: skip
    report = json.loads(out.read_text())
    rows = {r["impl"]: r for r in report["results"]}
    assert set(rows) == set(impls)
    for row in rows.values():
        assert "error" not in row and "memory_error" not in row, row
        assert row["time_ms"] > 0 and row["peak_mib"] >= 0
        assert row["time_vs_floor"] == pytest.approx(row["time_ms"] / rows["floor"]["time_ms"])
    fastest = min(rows["timm"]["time_ms"], rows["btp"]["time_ms"])
    assert rows["ours/auto"]["time_vs_fastest_peer"] == pytest.approx(rows["ours/auto"]["time_ms"] / fastest)
    # Both 14x14 targets are reported (there is no 64x64 row, so no memory target).
    assert [line.split(" (")[0] for line in report["targets"]] == [
        f"14x14 b1 time vs fastest peer {rows['ours/auto']['time_vs_fastest_peer']:.2f}x",
        f"14x14 b1 time vs matmul floor {rows['ours/auto']['time_vs_floor']:.2f}x",
    ]
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| 14x14 | 1 | **ours/auto** |" in out.with_suffix(".md").read_text()


def test_models_benchmark_tiny(tmp_path):
    out = tmp_path / "models.json"
    _run("models.py", "--models", "botnet_tiny", "resnet_tiny", "--modes", "eager", "--batch-32", "2",
         "--warmup", "1", "--steps", "1", "--out", str(out), cwd=tmp_path)  # fmt: skip
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"botnet_tiny", "resnet_tiny"}
    assert all(r["img_per_s"] > 0 and r["peak_bytes"] >= 0 for r in rows.values())
    bot, res = rows["botnet_tiny"], rows["resnet_tiny"]
    assert bot["params"] < res["params"]  # attention replaces the 3x3 convolutions of the last stage
    assert bot["baseline"] == "resnet_tiny"
    assert bot["throughput_vs_baseline"] == pytest.approx(bot["img_per_s"] / res["img_per_s"])


def test_checkpointing_benchmark_tiny(tmp_path):
    out = tmp_path / "checkpointing.json"
    _run("checkpointing.py", "--configs", "features:botnet_tiny:32:1", "--warmup", "0", "--steps", "1",
         "--out", str(out), cwd=tmp_path)  # fmt: skip
    rows = {r["checkpointing"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"off", "on"}
    off, on = rows["off"], rows["on"]
    assert all(r["task"] == "features" and r["img_size"] == 32 and r["step_s"] > 0 for r in rows.values())
    assert off["memory_vs_off"] == 1.0 and on["memory_vs_off"] == pytest.approx(on["peak_bytes"] / off["peak_bytes"])
    assert on["time_vs_off"] == pytest.approx(on["step_s"] / off["step_s"])
    assert 1.1 < on["flops_vs_off"] < 1.6  # the recomputation: about one more forward of the blocks
    assert "| features | botnet_tiny | 32 | 1 | on |" in out.with_suffix(".md").read_text()
