"""Training, evaluation and plotting: data readers, recipe pieces, checkpoints, exact resume, DDP.

Everything runs on tiny synthetic data (IDX files and an image folder written
here), never on the installed Fashion-MNIST.
"""

from __future__ import annotations

import gzip
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env as _env

from botnet.checkpoint import load_model
from botnet.classification.data import FASHION_MNIST_CLASSES, build_data, read_idx
from botnet.classification.evaluate import evaluate
from botnet.classification.train import TrainConfig, train
from botnet.models import create_model
from botnet.runtime.store import load_checkpoint
from botnet.training.optim import param_groups, warmup_cosine

DETERMINISTIC_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "raw_val_acc")


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_idx(path: Path, array: np.ndarray, type_code: int) -> None:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def _pattern_images(labels: np.ndarray, rng: np.random.Generator, side: int = 28) -> np.ndarray:
    """Learnable 28x28 uint8 images: a bright bar whose position encodes the class, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), side, side)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 2 + 2 * int(label)
        images[i, row : row + 3, 4 : side - 4] = 230
    return images


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-shaped IDX directory: 128 train / 64 test images, 10 classes."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 128), ("t10k", 64)):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", _pattern_images(labels, rng), 0x08)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8), 0x08)
    return root


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in DETERMINISTIC_KEYS} for r in records]


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int32, 0x0C), (np.float32, 0x0D)])
def test_read_idx_round_trip(tmp_path: Path, suffix: str, dtype: type, code: int) -> None:
    array = (np.arange(2 * 3 * 5) * 7 - 20).reshape(2, 3, 5).astype(dtype)
    if dtype is np.uint8:
        array = np.abs(array).astype(np.uint8)
    path = tmp_path / f"x-idx3{suffix}"
    _write_idx(path, array, code)
    assert torch.equal(read_idx(path), torch.from_numpy(array))


def test_read_idx_rejects_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1"
    _write_idx(path, np.arange(10, dtype=np.uint8), 0x08)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(path)


def test_fashion_mnist_reader_and_transforms(idx_dir: Path) -> None:
    data = build_data("fashion-mnist", idx_dir, img_size=16, aug="none")
    assert data.class_names == list(FASHION_MNIST_CLASSES) and data.in_chans == 1
    assert (len(data.train), len(data.val)) == (128, 64)
    image, label = data.val[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    raw = read_idx(idx_dir / "t10k-labels-idx1-ubyte.gz")
    assert label == int(raw[0])
    # Normalised with the training split's statistics: mean ~0 and std ~1 over the training set.
    stacked = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert abs(stacked.mean().item()) < 1e-3 and abs(stacked.std().item() - 1) < 1e-2


def test_missing_fashion_mnist_names_path_and_install_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        build_data("fashion-mnist", missing)
    assert str(missing) in str(info.value)
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        build_data("fashion-mnist", tmp_path / "half")
    result = subprocess.run(
        [sys.executable, "-m", "botnet", "train", "--dataset", "fashion-mnist", "--data-dir", str(missing),
         "--out", str(tmp_path / "run")], capture_output=True, text=True, env=_env(),
    )
    assert result.returncode == 2
    assert "botnet train: error:" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "images" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "images" / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path / "images"


def test_image_folder_skips_or_refuses_unreadable_images(image_folder: Path) -> None:
    broken = str(image_folder / "train" / "dog" / "broken.png")
    data = build_data("folder", image_folder, img_size=16, bad_images="skip", scan_images=True)
    assert data.class_names == ["cat", "dog"]
    assert (len(data.train), len(data.val)) == (12, 6)
    assert [item["path"] for item in data.info["skipped_images"]] == [broken]
    labels = [data.train[i][1] for i in range(len(data.train))]
    assert labels == [0] * 6 + [1] * 6  # no file got another class's label
    assert data.train[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="broken.png"):
        build_data("folder", image_folder, img_size=16, bad_images="error", scan_images=True)


def test_image_folder_names_file_that_fails_to_decode(image_folder: Path) -> None:
    data = build_data("folder", image_folder, img_size=16, bad_images="error")
    victim = image_folder / "val" / "cat" / "0.png"
    victim.write_bytes(victim.read_bytes()[:60])  # truncated: fails only when decoded
    with pytest.raises(ValueError, match=r"0\.png.*label 0"):
        data.val[0]


# --------------------------------------------------------------------------- recipe pieces


def test_no_weight_decay_on_norms_biases_and_position_tables() -> None:
    model = create_model("botnet_tiny", num_classes=10, in_chans=1)
    decay, no_decay = param_groups(model, 5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "layer4.0.attn.pos.rel_h" in undecayed and "fc.bias" in undecayed and "bn1.weight" in undecayed
    assert all(names[id(p)].endswith(".weight") and p.ndim > 1 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine_schedule() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == pytest.approx([0.5 * (1 + np.cos(np.pi * k / 6)) for k in range(6)])


def test_evaluate_matches_brute_force(idx_dir: Path) -> None:
    data = build_data("fashion-mnist", idx_dir, img_size=16, aug="none")
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1).eval()
    loader = torch.utils.data.DataLoader(data.val, batch_size=7)
    result = evaluate(model, loader, torch.device("cpu"), 10, confusion=True)
    images = torch.stack([data.val[i][0] for i in range(len(data.val))])
    labels = torch.tensor([data.val[i][1] for i in range(len(data.val))])
    with torch.no_grad():
        logits = model(images)
    assert result.count == 64
    assert result.top1 == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    top5 = logits.topk(5, 1).indices
    assert result.top5 == pytest.approx((top5 == labels[:, None]).any(1).float().mean().item())
    assert result.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(labels.tolist(), logits.argmax(1).tolist()):
        expected[t, p] += 1
    assert torch.equal(result.confusion, expected)


# --------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digits") / "run"
    config = TrainConfig(img_size=8, epochs=2, batch_size=128, out=str(out), progress=False, ema=True)
    return out, train(config)


def test_run_writes_checkpoint_contract(digits_run: tuple[Path, dict]) -> None:
    out, summary = digits_run
    for name in ("last.pt", "best.pt", "last.safetensors", "best.safetensors", "metrics.jsonl", "config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))
    records = _metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "val_loss", "val_acc", "lr", "epoch_seconds", "raw_val_acc"):
        assert all(isinstance(r[key], float) for r in records), key
    assert 0 <= records[-1]["val_acc"] <= 1 and summary["final_val_acc"] == records[-1]["val_acc"]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["epochs"] == 2 and config["versions"]["torch"] == torch.__version__
    checkpoint = load_checkpoint(out / "last.pt")
    assert {"model", "meta", "optimizer", "scheduler", "ema", "train_model", "rng", "epoch"} <= set(checkpoint)
    assert checkpoint["epoch"] == 2
    meta = checkpoint["meta"]
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["img_size"] == [8, 8]
    assert len(meta["mean"]) == len(meta["std"]) == 1
    # Every format holds the evaluated (EMA) weights, and they reproduce the logged accuracy.
    data = build_data("digits", img_size=8, aug="none", norm=(meta["mean"], meta["std"]))
    loader = torch.utils.data.DataLoader(data.val, batch_size=128)
    for source in (out / "last.pt", out / "last.safetensors"):
        model, _ = load_model(source)
        assert evaluate(model, loader, torch.device("cpu"), 10).top1 == pytest.approx(records[-1]["val_acc"])
    model, _ = load_model(out)  # the run directory: best.safetensors
    assert evaluate(model, loader, torch.device("cpu"), 10).top1 == pytest.approx(summary["best_val_acc"])


def test_refuses_existing_run_and_changed_settings(digits_run: tuple[Path, dict]) -> None:
    out, _ = digits_run
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(img_size=8, epochs=1, out=str(out), progress=False))
    with pytest.raises(ValueError, match="cannot change model"):
        train(resume=str(out), model="resnet_tiny")


def test_eval_and_plot_commands(digits_run: tuple[Path, dict], tmp_path: Path) -> None:
    from botnet.cli import main

    out, summary = digits_run
    png = tmp_path / "confusion.png"
    result = subprocess.run(
        [sys.executable, "-m", "botnet", "eval", "--checkpoint", str(out / "best.pt"), "--json", "--confusion",
         str(png)], capture_output=True, text=True, env=_env(), check=True,
    )
    payload = json.loads(result.stdout)
    assert payload["top1"] == pytest.approx(summary["best_val_acc"]) and payload["images"] == 360
    assert sum(map(sum, payload["confusion_matrix"])) == 360 and png.stat().st_size > 5000
    assert main(["plot", str(out), "-o", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 5000
    assert main(["plot", str(tmp_path)]) == 2  # no metrics.jsonl: one-line error


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "evil"
    run.mkdir()
    torch.save({"model": {}, "meta": {}, "payload": Path("/etc/passwd")}, run / "last.pt")  # a pickled object
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(run / "last.pt")
    for argv in (["train", "--resume", str(run)], ["eval", "--checkpoint", str(run / "last.pt")]):
        result = subprocess.run([sys.executable, "-m", "botnet", *argv], capture_output=True, text=True, env=_env())
        assert result.returncode == 2, result.stderr
        assert "refusing to load" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- exact resume after SIGKILL


def _train_cmd(idx_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "botnet", "train", "--dataset", "fashion-mnist", "--data-dir", str(idx_dir),
        "--model", "botnet_tiny", "--img-size", "16", "--batch-size", "16", "--lr", "0.05", "--no-progress",
        "--out", str(out), *extra,
    ]


def test_resume_after_sigkill_matches_uninterrupted_run(idx_dir: Path, tmp_path: Path) -> None:
    # Augmentation, MixUp and EMA all draw on RNG or carry state: resume must restore every bit of it.
    recipe = ["--epochs", "4", "--ema", "--ema-decay", "0.9", "--mixup", "0.2", "--workers", "1"]
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(idx_dir, reference, *recipe), check=True, capture_output=True, env=_env())

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_cmd(idx_dir, killed, *recipe), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 120
    # Kill as soon as the first checkpoint lands: the moment between last.pt and the rest of the
    # epoch's files (safetensors, metrics line) is the most delicate one to resume from.
    while not (killed / "last.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    done = load_checkpoint(killed / "last.pt")["epoch"]
    assert 1 <= done < 4, f"killed after {done} epochs; the test needs a kill mid-run"
    assert len(_metrics(killed)) <= done

    subprocess.run(_train_cmd(idx_dir, killed, "--resume", str(killed)), check=True, capture_output=True,
                   env=_env())
    assert _deterministic(_metrics(killed)) == _deterministic(_metrics(reference))
    resumed, _ = load_model(killed / "last.safetensors")
    uninterrupted, _ = load_model(reference / "last.safetensors")
    for (name, a), b in zip(resumed.state_dict().items(), uninterrupted.state_dict().values()):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------- distributed


def test_two_gloo_processes_match_one_process(idx_dir: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x batch 16 vs 1 process x batch 32 in 2 micro-batches.

    The sampler order is a function of (seed, epoch) only, so both runs see the
    same global batches; DDP averages the two ranks' gradients. BatchNorm
    normalises with per-process statistics (torch's SyncBatchNorm does not run
    on CPU), so the one-process run uses ``--accum-steps 2``: its micro-batches
    are the interleaved halves each rank gets, with the same statistics. The
    parameters must then agree up to float summation order. Running BN
    averages differ (DDP keeps rank 0's, accumulation updates them twice per
    step), so validation metrics are checked against a one-process
    evaluation of the saved 2-process model instead: that tests the sharded
    evaluation and its all-reduce.
    """
    recipe = ["--epochs", "2", "--aug", "none", "--ema", "--ema-decay", "0.9"]  # saved and evaluated: the EMA
    single = tmp_path / "single"
    # A later --batch-size wins in argparse: 32 images per step in one process.
    subprocess.run(_train_cmd(idx_dir, single, *recipe, "--batch-size", "32", "--accum-steps", "2"), check=True,
                   capture_output=True, env=_env())
    double = tmp_path / "double"
    cmd = _train_cmd(idx_dir, double, *recipe)
    cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "botnet"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    one, two = _metrics(single), _metrics(double)
    assert [r["epoch"] for r in two] == [1, 2]  # rank 0 alone wrote the file (else 4 lines)
    config = json.loads((double / "config.json").read_text())
    assert config["world_size"] == 2 and config["backend"] == "gloo"
    for a, b in zip(one, two):
        assert b["lr"] == pytest.approx(a["lr"])  # same number of optimiser steps
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["train_acc"] == a["train_acc"]
    model_one, _ = load_model(single / "last.safetensors")
    model_two, meta = load_model(double / "last.safetensors")
    for (name, a), b in zip(model_one.named_parameters(), model_two.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), name
    data = build_data("fashion-mnist", idx_dir, img_size=16, aug="none", norm=(meta["mean"], meta["std"]))
    result = evaluate(model_two, torch.utils.data.DataLoader(data.val, batch_size=64), torch.device("cpu"), 10)
    assert result.top1 == pytest.approx(two[-1]["val_acc"]) and result.top5 == pytest.approx(two[-1]["val_top5"])
    assert result.loss == pytest.approx(two[-1]["val_loss"], rel=1e-5)


def test_scan_images_finds_a_truncated_jpeg_before_training(image_folder: Path, tmp_path: Path) -> None:
    """With --scan-images, a JPEG cut in half (it passes ``Image.verify``, not a full decode) is reported by
    path before the first epoch and left out, and the run goes on."""
    from PIL import Image

    rng = np.random.default_rng(3)
    victim = image_folder / "train" / "cat" / "cut.jpg"
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(victim, quality=95)
    victim.write_bytes(victim.read_bytes()[:300])
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "botnet", "train", "--dataset", "folder", "--data-dir", str(image_folder), "--model",
         "resnet_mini", "--img-size", "16", "--epochs", "1", "--batch-size", "4", "--no-progress", "--out", str(out),
         "--scan-images"],
        capture_output=True, text=True, env=_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    header = result.stdout.split("epoch", 1)[0]
    assert "cut.jpg" in header and "broken.png" in header  # reported before training starts
    skipped = json.loads((out / "config.json").read_text())["data"]["skipped_images"]
    assert sorted(Path(item["path"]).name for item in skipped) == ["broken.png", "cut.jpg"]
    assert json.loads((out / "config.json").read_text())["data"]["train_size"] == 12


def test_batched_loader_gives_the_per_image_pipeline_without_augmentation(idx_dir: Path) -> None:
    """In-memory data train on whole batches; without augmentation they equal the per-image transforms,
    and with it every batch is a function of the (seed, epoch) generator state."""
    from torch.utils.data import DistributedSampler

    from botnet.classification.data import BatchAugment, BatchedLoader

    data = build_data("fashion-mnist", idx_dir, img_size=16, aug="none")
    sampler = DistributedSampler(data.train, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = BatchedLoader(data.train, sampler, 32, data.batch_augment, data.mean, data.std, torch.Generator())
    assert data.batch_augment == BatchAugment() and len(loader) == 4
    order = list(sampler)
    for b, (images, labels) in enumerate(loader):
        expected = torch.stack([data.train[i][0] for i in order[32 * b : 32 * b + 32]])
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
        assert labels.tolist() == [data.train[i][1] for i in order[32 * b : 32 * b + 32]]

    augmented = build_data("fashion-mnist", idx_dir, img_size=16, aug="basic", reprob=0.5)
    assert augmented.batch_augment == BatchAugment(padding=1, flip=True, reprob=0.5)

    def epoch(seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [x for x, _ in BatchedLoader(augmented.train, sampler, 32, augmented.batch_augment, augmented.mean,
                                            augmented.std, generator)]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert any((x == 0).all(dim=1).any() for x in first)  # some erased pixels (0 = the mean after normalising)


def test_flip_tta_evaluation_and_other_sizes(idx_dir: Path, tmp_path: Path) -> None:
    data = build_data("fashion-mnist", idx_dir, img_size=16, aug="none")
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1).eval()
    loader = torch.utils.data.DataLoader(data.val, batch_size=16)
    result = evaluate(model, loader, torch.device("cpu"), 10, tta_flip=True)
    images = torch.stack([data.val[i][0] for i in range(len(data.val))])
    labels = torch.tensor([data.val[i][1] for i in range(len(data.val))])
    with torch.no_grad():
        logits = 0.5 * (model(images) + model(images.flip(-1)))
    assert result.top1 == pytest.approx((logits.argmax(1) == labels).float().mean().item())

    out = tmp_path / "run"
    train(TrainConfig(dataset="fashion-mnist", data_dir=str(idx_dir), model="botnet_tiny", img_size=16, epochs=1,
                      batch_size=32, out=str(out), progress=False, tta_flip=True))
    from botnet.classification.evaluate import evaluate_checkpoint

    same = evaluate_checkpoint(str(out / "last.pt"), data_dir=str(idx_dir), confusion_png=str(tmp_path / "c.png"))
    assert same["tta_flip"] and same["top1"] == pytest.approx(_metrics(out)[-1]["val_acc"])
    larger = evaluate_checkpoint(str(out / "last.pt"), data_dir=str(idx_dir), img_size=(24, 20),
                                 tta_flip=False, confusion_png=str(tmp_path / "c.png"))
    assert larger["img_size"] == [24, 20] and not larger["tta_flip"] and larger["images"] == 64
    with pytest.raises(ValueError, match="not for --dataset digits"):
        TrainConfig(tta_flip=True).validate()
