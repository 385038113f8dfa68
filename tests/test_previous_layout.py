"""Checkpoints and run directories written before the runtime/ layout still load, predict the same and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from botnet.checkpoint import load_model
from botnet.runtime.store import load_checkpoint

DATA = Path(__file__).parent / "data" / "previous_layout"


def test_an_old_classifier_loads_from_every_file_and_gives_the_same_logits():
    expected = load_checkpoint(DATA / "outputs.pt")["classifier_logits"]
    torch.manual_seed(2)
    inputs = torch.rand(2, 1, 32, 32)
    for source in (DATA / "classifier_run", DATA / "classifier_run" / "last.pt",
                   DATA / "classifier_run" / "last.safetensors"):
        model, meta = load_model(source)
        assert model.spec.ref_img_size == (32, 32)  # stored as the int 32 then
        with torch.no_grad():
            torch.testing.assert_close(model(inputs), expected, rtol=0, atol=1e-6)
        assert meta["class_names"] == [str(d) for d in range(10)]


def test_an_old_detector_loads_and_detects_the_same():
    pytest.importorskip("pycocotools")
    from botnet.detection.checkpoint import load_detector

    expected = load_checkpoint(DATA / "outputs.pt")
    model, meta = load_detector(DATA / "detector.safetensors")
    assert meta["class_names"] == ["a", "b"]
    torch.manual_seed(1)
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90)])[0]
    torch.testing.assert_close(out["boxes"], expected["detector_boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out["scores"], expected["detector_scores"], rtol=0, atol=1e-5)


def test_an_old_run_resumes(tmp_path):
    from botnet.classification.train import train

    run = tmp_path / "run"
    shutil.copytree(DATA / "classifier_run", run)
    summary = train(resume=str(run), epochs=2, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and summary["final"]["epoch"] == 2
    assert records[0] == json.loads((DATA / "classifier_run" / "metrics.jsonl").read_text().splitlines()[0])
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
