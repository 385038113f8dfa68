"""Checkpoints: round trips, atomic writes, refusal of pickled code."""

from __future__ import annotations

import collections
import os
import pickle
import stat

import pytest
import torch

import botnet
from botnet.checkpoint import load_model, model_meta, save_model
from botnet.models.weights import read_state_dict
from botnet.runtime.store import atomic_write, load_checkpoint, save_checkpoint


@pytest.fixture
def model() -> botnet.BoTNet:
    return botnet.create_model("botnet_tiny", num_classes=4, pos_emb="absolute", heads=2).eval()


def test_safetensors_and_pt_round_trip(tmp_path, model) -> None:
    save_model(tmp_path / "w.safetensors", model, class_names=["a", "b", "c", "d"], img_size=[32, 32])
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "meta": model_meta(model), "epoch": 3})
    x = torch.randn(2, 3, 40, 24)
    for name in ("w.safetensors", "c.pt"):
        loaded, meta = load_model(tmp_path / name)
        assert meta["spec"]["pos_emb"] == "absolute" and meta["spec"]["heads"] == 2
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    assert load_model(tmp_path / "w.safetensors")[1]["class_names"] == ["a", "b", "c", "d"]


def test_run_directory_prefers_best(tmp_path, model) -> None:
    save_model(tmp_path / "last.safetensors", botnet.create_model("botnet_tiny", num_classes=4, pos_emb="absolute", heads=2))
    save_model(tmp_path / "best.safetensors", model)
    loaded, _ = load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="no best/last"):
        empty = tmp_path / "empty"
        empty.mkdir()
        load_model(empty)


class Payload:
    """A class whose unpickling would run code of the file's choosing."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path, model) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "meta": model_meta(model), "extra": Payload()}, path)
    with pytest.raises(ValueError, match="refusing to load .*unpickle"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_model(path)
    with pytest.raises(ValueError, match="weights_only=True refuses"):
        read_state_dict(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(collections.Counter(a=1), protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(raw)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path) -> None:
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})

    def crash(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert load_checkpoint(path)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary left behind


def test_atomic_write_uses_the_umask_mode(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "a.pt", {"x": torch.zeros(1)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o644


def test_missing_files_are_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_model(tmp_path / "nope.safetensors")
