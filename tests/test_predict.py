"""botnet predict: preprocessing from the checkpoint, top-k output, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import botnet
from botnet.checkpoint import save_model
from botnet.cli import main

CLASSES = ["cat", "dog", "bird", "fish"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
COLOURS = {"orange.png": (230, 120, 20), "teal.png": (10, 140, 150)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    model = botnet.create_model("botnet_tiny", num_classes=len(CLASSES))
    # Give the logits some spread so the ranking is not a near tie.
    torch.nn.init.normal_(model.fc.weight, std=2.0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
    model.eval()
    folder = tmp_path_factory.mktemp("predict")
    ckpt = folder / "best.safetensors"
    save_model(ckpt, model, class_names=CLASSES, img_size=[32, 32], mean=list(MEAN), std=list(STD))
    paths = {}
    for name, colour in COLOURS.items():
        # Solid colours of odd sizes: the resize must keep them solid, so the
        # model input is known exactly without the code under test.
        Image.new("RGB", (45, 37), colour).save(folder / name)
        paths[name] = str(folder / name)
    return model, ckpt, paths, folder


def _expected_probabilities(model, colour):
    pixel = (torch.tensor(colour, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    x = pixel.view(1, 3, 1, 1).expand(1, 3, 32, 32)
    with torch.no_grad():
        return model(x).softmax(-1)[0]


def test_json_gives_topk_of_the_model_on_the_checkpoints_preprocessing(trained, capsys):
    model, ckpt, paths, _ = trained
    images = [paths["orange.png"], paths["teal.png"]]
    assert main(["predict", "--checkpoint", str(ckpt), *images, "--topk", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["img_size"] == [32, 32] and payload["defaults_used"] == []
    assert [p["image"] for p in payload["predictions"]] == images
    for prediction, name in zip(payload["predictions"], ["orange.png", "teal.png"]):
        expected = _expected_probabilities(model, COLOURS[name])
        values, indices = expected.topk(3)
        assert [e["rank"] for e in prediction["top"]] == [1, 2, 3]
        assert [e["index"] for e in prediction["top"]] == indices.tolist()
        assert [e["label"] for e in prediction["top"]] == [CLASSES[i] for i in indices.tolist()]
        np.testing.assert_allclose([e["probability"] for e in prediction["top"]], values.numpy(), atol=1e-5)


def test_table_output_and_topk_larger_than_the_classes(trained, capsys):
    _, ckpt, paths, folder = trained
    assert main(["predict", "--checkpoint", str(folder), paths["teal.png"], "--topk", "10"]) == 0
    out = capsys.readouterr().out
    assert "top-4" in out and "teal.png" in out
    assert all(label in out for label in CLASSES)


def test_grayscale_model_and_missing_description_entries(tmp_path, capsys):
    model = botnet.create_model("botnet_tiny", num_classes=3, in_chans=1)
    ckpt = tmp_path / "gray.safetensors"
    save_model(ckpt, model)  # no class_names, img_size, mean or std
    Image.new("RGBA", (20, 30), (100, 150, 200, 128)).save(tmp_path / "rgba.png")
    Image.new("L", (64, 64), 90).save(tmp_path / "gray.png")
    images = [str(tmp_path / "rgba.png"), str(tmp_path / "gray.png")]
    assert main(["predict", "--checkpoint", str(ckpt), *images, "--json", "--batch-size", "1"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["defaults_used"]) == {"img_size", "mean/std", "class_names"}
    for prediction in payload["predictions"]:
        assert [e["label"] for e in prediction["top"]] == [f"class_{e['index']}" for e in prediction["top"]]
        assert sum(e["probability"] for e in prediction["top"]) == pytest.approx(1.0, abs=1e-5)


def test_missing_and_corrupt_images_are_named(trained, capsys):
    # Listed with the reason, beside the images that were read (exit 0: something to use).
    _, ckpt, paths, folder = trained
    assert main(["predict", "--checkpoint", str(ckpt), paths["teal.png"], str(folder / "nope.png"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("botnet predict: warning: 1 of 2") and "Traceback" not in err
    assert [p["error"] for p in json.loads(out)["predictions"]] == [None, f"no image or folder at {str(folder / 'nope.png')!r}"]

    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    assert main(["predict", "--checkpoint", str(ckpt), paths["teal.png"], str(corrupt), "--csv"]) == 0
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"{corrupt},,") and "cannot read image" in last and "Traceback" not in err

    truncated = folder / "truncated.png"
    truncated.write_bytes((folder / "orange.png").read_bytes()[:60])
    assert main(["predict", "--checkpoint", str(ckpt), str(truncated)]) == 2
    assert "truncated.png" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "none.safetensors"), str(tmp_path / "a.png")]) == 2
    assert "none.safetensors" in capsys.readouterr().err
