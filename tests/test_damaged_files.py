"""Damaged, empty, garbage and unsafe checkpoint files: one line that names the file and the cause, in every command."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from PIL import Image

import botnet
from botnet.checkpoint import load_model, model_meta, save_model
from botnet.cli import main
from botnet.models.weights import read_state_dict
from botnet.runtime.store import CheckpointError, load_checkpoint, read_weights_and_meta, save_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good .pt and .safetensors, and damaged variants of each."""
    root = tmp_path_factory.mktemp("damaged")
    model = botnet.create_model("botnet_tiny", num_classes=3)
    meta = model_meta(model, class_names=["a", "b", "c"], img_size=[32, 32], mean=[0.5] * 3, std=[0.25] * 3,
                      dataset="folder")
    save_model(root / "good.safetensors", model, **{k: v for k, v in meta.items() if k not in ("format", "version",
                                                                                               "model", "spec")})
    save_checkpoint(root / "good.pt", {"model": model.state_dict(), "meta": meta})
    paths = {}
    for suffix in (".pt", ".safetensors"):
        data = (root / f"good{suffix}").read_bytes()
        for kind, payload in (("truncated", data[: len(data) // 2]), ("empty", b""), ("garbage", os.urandom(4096)),
                              ("text", b"this is not a checkpoint at all\n" * 10)):
            path = root / f"{kind}{suffix}"
            path.write_bytes(payload)
            paths[f"{kind}{suffix}"] = path
    Image.new("RGB", (40, 40), (10, 200, 30)).save(root / "img.png")
    return root, paths


DAMAGED = ["truncated.pt", "empty.pt", "garbage.pt", "text.pt", "truncated.safetensors", "empty.safetensors",
           "garbage.safetensors", "text.safetensors"]


@pytest.mark.parametrize("name", DAMAGED)
def test_every_reader_calls_a_damaged_file_damaged(files, name):
    _, paths = files
    path = paths[name]
    readers = [read_weights_and_meta, load_model, read_state_dict]
    if name.endswith(".pt"):
        readers.append(load_checkpoint)
    for reader in readers:
        with pytest.raises(CheckpointError) as info:
            reader(path)
        message = str(info.value)
        assert str(path) in message and ("damaged" in message or "empty" in message), message
        assert "unpickle" not in message and "refusing" not in message, message
        assert "\n" not in message


def test_only_real_pickled_objects_are_called_unsafe(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo unpickled",))

    torch.save({"model": {}, "meta": {}, "x": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": object.__new__(Evil)}, protocol=4))
    for path in (tmp_path / "evil.pt", tmp_path / "plain.pkl"):
        with pytest.raises(CheckpointError, match="refusing to load .*pickled Python objects"):
            load_checkpoint(path)
    torch.save([1, 2, 3], tmp_path / "list.pt")  # safe, but not a checkpoint
    with pytest.raises(CheckpointError, match="not a botnet checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def _commands(root, path):
    image = str(root / "img.png")
    return {
        "eval": ["eval", "--checkpoint", str(path)],
        "predict": ["predict", "--checkpoint", str(path), image],
        "export": ["export", "--checkpoint", str(path), "--format", "torchscript", "--out", str(root / "x.pt")],
        "attention": ["attention", "--checkpoint", str(path), "--image", image, "--out", str(root / "a.png")],
        "train --resume": ["train", "--resume", str(path)],
        "detect eval": ["detect", "eval", "--checkpoint", str(path), "--data", str(root)],
        "detect predict": ["detect", "predict", image, "--checkpoint", str(path), "--out", str(root / "det")],
        "detect train --resume": ["detect", "train", "--resume", str(path)],
    }


@pytest.mark.parametrize("name", ["truncated.pt", "garbage.pt", "truncated.safetensors", "empty.safetensors"])
def test_every_command_reports_a_damaged_checkpoint_in_one_line(files, name, capsys):
    root, paths = files
    for label, argv in _commands(root, paths[name]).items():
        if label.startswith("detect"):
            pytest.importorskip("pycocotools")
        if label.endswith("--resume") and name.endswith(".safetensors"):
            continue  # --resume reads .pt training checkpoints
        assert main(argv) == 2, label
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, (label, err)
        assert name in err and ("damaged" in err or "empty" in err), (label, err)
        assert "refusing" not in err and "Traceback" not in err, (label, err)
