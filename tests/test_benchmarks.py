"""The benchmark scripts run end to end (tiny sizes) and their ratios follow from their timings."""

from __future__ import annotations

import argparse
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
         "--impls", *impls, "--clock", "cpu", "--threads", "1", "--out", str(out), cwd=tmp_path)  # fmt: skip
    report = json.loads(out.read_text())
    assert report["config"]["clock"] == "cpu" and report["machine"]["torch_threads"] == 1
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


def test_gpu_script_plans_every_stage_for_cuda(tmp_path):
    # Nobody can run the CUDA plan here: check that it is complete and names scripts that exist.
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_all
    finally:
        sys.path.remove(str(BENCHMARKS))
    args = argparse.Namespace(device="cuda", quick=False)
    plan = {stage: gpu_all.stage_commands(stage, args, tmp_path) for stage in gpu_all.STAGES}
    for commands in plan.values():
        for cmd in commands:
            assert cmd[0] == sys.executable
            assert (cmd[1] == "-m") or Path(cmd[1]).is_file()
    paths = plan["paths"][0]
    assert {"ours/sdpa", "ours/flex", "ours/fold", "ours/chunked"} <= set(paths) and "96:2" in paths
    assert {"timm", "btp", "ours/fold"} <= set(plan["peers"][0])
    assert all("cuda" in cmd for stage in ("kernels", "paths", "peers", "models") for cmd in plan[stage])
    assert sum(gpu_all.STAGE_CAPS.values()) >= 570  # the budget, not the caps, bounds a full run


def test_gpu_script_kernels_stage_on_cpu(tmp_path):
    _run("gpu_all.py", "--device", "cpu", "--quick", "--stages", "kernels", "--out", str(tmp_path), cwd=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["kernels"]["status"] == "ok"
    assert {"torch", "date", "device"} <= set(summary["machine"])
    report = json.loads((tmp_path / "kernels.json").read_text())
    fold = [r for r in report["results"] if r["path"] == "fold"]
    assert fold and all("error" not in r for r in report["results"])
    for row in fold:  # on CPU, fold runs PyTorch's flash kernel both ways, deterministically, as the reference
        assert row["kernels"] == ["aten::_scaled_dot_product_flash_attention_for_cpu",
                                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"]  # fmt: skip
        assert row["deterministic_grads"]
        assert row["out_rel_err"] < 1e-5 and max(row["grad_rel_err"]) < 1e-5


def test_fashion_mnist_benchmark_tiny(tmp_path):
    # The real recipes, shortened to one epoch on a tiny IDX set: runs, evaluations and the report agree.
    import numpy as np
    from test_train import _pattern_images, _write_idx

    data = tmp_path / "idx"
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 64), ("t10k", 40)):
        labels = np.arange(count) % 10
        _write_idx(data / f"{prefix}-images-idx3-ubyte.gz", _pattern_images(labels, rng), 0x08)
        _write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8), 0x08)
    root, out = tmp_path / "runs", tmp_path / "fm.json"
    args = ["--root", str(root), "--seeds", "0", "1", "--out", str(out), "--ablation-epochs", "1",
            f"--train-args=--epochs 2 -b 32 --data-dir {data}"]  # fmt: skip
    _run("fashion_mnist.py", *args, cwd=tmp_path)
    report = json.loads(out.read_text())
    runs = report["runs"]
    ablation = {f"botnet-{p}-e1-s0" for p in ("relative", "absolute", "none")}
    assert set(runs) == {"botnet-s0", "resnet-s0", "botnet-s1", "resnet-s1"} | ablation
    for name, row in runs.items():
        metrics = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert row["final_top1"] == metrics[-1]["val_acc"] and row["wall_s"] > 0
        assert row["epochs"] == len(metrics) == (1 if name in ablation else 2)
    for name in ablation:
        settings = json.loads((root / name / "config.json").read_text())["settings"]
        assert settings["model_kwargs"] == {"pos_emb": name.split("-")[1]} and settings["epochs"] == 1
    for model in ("botnet", "resnet"):
        finals = [runs[f"{model}-s{s}"]["final_top1"] for s in (0, 1)]
        summary = report["summary"][model]
        assert summary["final_top1_mean"] == pytest.approx(sum(finals) / 2)
        assert summary["final_top1_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
        for seed in (0, 1):
            evaluation = runs[f"{model}-s{seed}"]["eval"]
            # The last checkpoint, evaluated again, gives the run's own final-epoch number.
            assert evaluation["top1"] == pytest.approx(runs[f"{model}-s{seed}"]["final_top1"])
            assert len(evaluation["per_class_accuracy"]) == 10 and set(evaluation["sizes"]) == {"24", "32"}
    table = out.with_suffix(".md").read_text()
    assert "| relative | botnet-relative-e1-s0 | 1 |" in table and "| none | botnet-none-e1-s0 | 1 |" in table
    assert out.with_suffix(".png").stat().st_size > 0
    walls = {name: (root / name / "wall.json").read_text() for name in runs}
    _run("fashion_mnist.py", *args, cwd=tmp_path)  # everything finished: reused, not trained again
    assert walls == {name: (root / name / "wall.json").read_text() for name in runs}
    assert report["budget"] is None and not (root / "botnet-e24-s0").exists()  # the budget run only when asked for
    # The budget stage: the BoTNet recipe on a longer schedule, and where its test curve first reaches the target.
    _run("fashion_mnist.py", *args, "--stages", "budget", "report", "--budget-epochs", "3", "--target", "0.3", cwd=tmp_path)
    budget = json.loads(out.read_text())["budget"]
    metrics = [json.loads(line) for line in (root / "botnet-e3-s0" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and budget["run"] == "botnet-e3-s0" and budget["final_top1"] == metrics[-1]["val_acc"]
    first = next((i for i, m in enumerate(metrics) if m["val_acc"] >= 0.3), None)
    assert budget["first_epoch_at_target"] == (None if first is None else first + 1)
    if first is not None:
        assert budget["training_s_to_target"] == metrics[first]["elapsed_seconds"]
    assert "### Longer schedule: when is 30.00 % reached?" in out.with_suffix(".md").read_text()


def test_input_pipeline_benchmark_tiny(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("webdataset")
    pytest.importorskip("skimage")
    out = tmp_path / "input_pipeline.json"
    _run("input_pipeline.py", "--work", str(tmp_path / "work"), "--classes", "2", "--per-class", "8", "--workers", "1",
         "--batch", "4", "--rounds", "1", "--lever-images", "4", "--lever-rounds", "1", "--large-images", "2",
         "--out", str(out), cwd=tmp_path)  # fmt: skip
    report = json.loads(out.read_text())
    assert {"torchvision", "timm", "pillow", "date", "cpu"} <= set(report["machine"])
    rows = {r["loader"]: r for r in report["results"]}
    assert set(rows) == {"folder", "shards", "timm", "torchvision"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["workers"] == 1 and row["images"] == 16  # every image of the epoch, first batch included
        assert row["images_per_second_per_worker"] == row["img_per_s"] > 0
        assert row["img_per_cpu_s"] > 0 and row["peak_pss_bytes"] > 0
        assert row["per_worker_vs_timm"] == pytest.approx(row["img_per_s"] / rows["timm"]["img_per_s"])
    levers = {r["lever"]: r for r in report["levers"]}
    decode = levers["decode: torchvision.io.decode_jpeg (libjpeg-turbo)"]
    assert decode["ms_per_image"] > 0 and 0 <= decode["identical_to_pil_fraction"] <= 1
    draft = levers["crop+resize 1600x1200: PIL draft() decode"]
    assert 0 <= draft["draft_used_fraction"] <= 1 and draft["mean_abs_diff_all"] >= 0
    for ours in ("folder", "shards"):
        line = next(t for t in report["targets"] if t.startswith(f"ours ({ours}) >= timm img/s per worker at 1 worker"))
        assert ("HIT" if rows[ours]["per_worker_vs_timm"] >= 1 else "MISS") in line
    assert "| folder | 1 |" in out.with_suffix(".md").read_text()


def test_streaming_formats_benchmark_tiny(tmp_path):
    pytest.importorskip("webdataset")
    pytest.importorskip("skimage")
    out = tmp_path / "streaming.json"
    _run("streaming_formats.py", "--work", str(tmp_path / "work"), "--classes", "2", "--per-class", "5",
         "--repeat", "1", "--formats", "webdataset", "mosaicml-streaming", "--out", str(out), cwd=tmp_path)  # fmt: skip
    rows = {r["format"]: r for r in json.loads(out.read_text())["results"]}
    wds_row = rows["webdataset"]
    assert wds_row["original_bytes_kept"] and wds_row["samples_read"] == 10
    assert wds_row["read_raw_per_s"] > 0 and wds_row["read_us_per_sample"] == pytest.approx(1e6 / wds_row["read_raw_per_s"])
    assert wds_row["deps"]["names"] == ["braceexpand", "webdataset"]
    if "error" in rows["mosaicml-streaming"]:  # not installed here: skipped and said so, not a crash
        assert rows["mosaicml-streaming"]["error"].startswith("not installed")
