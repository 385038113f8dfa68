"""ImageNet scale: nothing decoded before training, unreadable files handled when read, epoch sizes, shards
in training and evaluation, resuming by itself after torchrun's elastic restarts, two nodes, the recipe files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env as _env
from PIL import Image

from botnet.checkpoint import load_model
from botnet.classification import data as data_module
from botnet.classification.data import EpochSampler, build_data, scan_data
from botnet.training.config import load_config_file

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
DETERMINISTIC_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr")


def _botnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "botnet", *args]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "botnet"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _deterministic(run: Path) -> list[dict]:
    return [{key: record.get(key) for key in DETERMINISTIC_KEYS} for record in _metrics(run)]


def _same_weights(a: Path, b: Path) -> None:
    model_a, _ = load_model(a / "last.safetensors")
    model_b, _ = load_model(b / "last.safetensors")
    for (name, x), y in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(x, y), name


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "Warning" not in line]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_folder(root: Path, per_class: dict[str, int], classes: tuple[str, ...] = ("cat", "dog", "eel"),
                 size: tuple[int, int] = (40, 48)) -> Path:
    """``root/<split>/<class>/*.jpg``: small JPEGs of random pixels (seed 0)."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
    return root


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:150])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = _make_folder(tmp_path / "images", {"train": 6, "val": 2})
    _truncate(root / "train" / "dog" / "002.jpg")  # index 6 + 2 = 8 of the sorted training list
    return root


# --------------------------------------------------------------------------- unreadable files, when read


def test_nothing_is_decoded_before_training(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(data_module, "read_image", lambda path, *a, **k: calls.append(path))
    monkeypatch.setattr(data_module, "find_unreadable", lambda paths, *a: calls.extend(paths) or [])
    data = build_data("folder", folder, img_size=16)
    assert calls == [] and len(data.train) == 18 and data.info["train_size"] == 18


def test_unreadable_file_is_replaced_by_the_next_readable_one_with_its_own_label(folder: Path,
                                                                                  tmp_path: Path) -> None:
    data = build_data("folder", folder, img_size=16, aug="none")
    log = tmp_path / "skipped.jsonl"
    data.train.skip_log = str(log)
    bad = data.train.samples.index((str(folder / "train" / "dog" / "002.jpg"), 1))
    image, label = data.train[bad]
    next_image, next_label = data.train[bad + 1]
    assert label == next_label == data.train.samples[bad + 1][1] and torch.equal(image, next_image)
    last = len(data.train) - 1  # wraps around: the last file's replacement would be the first
    data.train.samples[last] = data.train.samples[bad]
    assert data.train[last][1] == data.train.samples[0][1] == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(Path(r["path"]).name, r["label"]) for r in records] == [("002.jpg", 1), ("002.jpg", 1)]
    assert "does not decode" in records[0]["reason"]
    data = build_data("folder", folder, img_size=16, bad_images="error")
    with pytest.raises(ValueError, match=r"002\.jpg.*label 1"):
        data.train[bad]


def test_up_front_scan_is_split_over_ranks(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real = data_module.find_unreadable
    monkeypatch.setattr(data_module, "find_unreadable", lambda paths, *a: seen.append(list(paths)) or real(paths, *a))
    data = build_data("folder", folder, img_size=16)
    everything = [path for part in (data.train, data.val) for path, _ in part.samples]
    found = []
    for rank in (0, 1):
        data = build_data("folder", folder, img_size=16)
        found.append(scan_data(data, "skip", rank=rank, world_size=2, gather=lambda mine: [mine]))
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == sorted(everything)
    assert sum(len(f) for f in found) == 1  # the rank that decoded the file found it
    data = build_data("folder", folder, img_size=16)
    bad = scan_data(data, "skip", rank=0, world_size=2, gather=lambda mine: [mine, found[0] + found[1]])
    assert [Path(p).name for p, _ in bad] == ["002.jpg"] and len(data.train) == 17  # dropped on every rank


def test_epoch_size_caps_each_epoch_with_the_head_of_the_epoch_order() -> None:
    from torch.utils.data import DistributedSampler

    dataset = list(range(100))
    for rank in (0, 1):
        full = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        capped = EpochSampler(dataset, 2, rank, seed=3, epoch_size=30)
        for epoch in (0, 1):
            full.set_epoch(epoch)
            capped.set_epoch(epoch)
            assert list(capped) == list(full)[:15] and len(capped) == 15
    assert len(EpochSampler(dataset, 2, 0, epoch_size=1000)) == 50


def test_training_reports_an_unreadable_file_once_and_keeps_it_in_the_run(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["train", "--dataset", "folder", "--data-dir", str(folder), "--model", "resnet_tiny", "--img-size", "16",
              "--batch-size", "6", "--no-progress", "--aug", "none"]
    result = subprocess.run(_botnet(*common, "--epochs", "2", "--out", str(out)), capture_output=True, text=True,
                            env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("skipped unreadable image") == 1 and "002.jpg (label 1)" in result.stdout
    records = [json.loads(line) for line in (out / "bad_images.jsonl").read_text().splitlines()]
    assert [(Path(r["path"]).name, r["label"]) for r in records] == [("002.jpg", 1)]
    assert [r["bad_images"] for r in _metrics(out)] == [1, 0]

    stopped = subprocess.run(_botnet(*common, "--epochs", "1", "--bad-images", "error", "--workers", "1", "--out",
                                     str(tmp_path / "stopped")), capture_output=True, text=True, env=_env(), timeout=300)
    assert stopped.returncode == 2
    line = _one_error_line(stopped.stderr)
    assert "002.jpg" in line and "label 1" in line


# --------------------------------------------------------------------------- shards in training


@pytest.fixture
def shards(folder: Path, tmp_path: Path) -> Path:
    from botnet.classification.shards import pack_folder

    out = tmp_path / "shards"
    pack_folder(folder, out, shard_size=4, progress=False)  # `botnet data pack` itself: tests/test_shards.py
    return out  # 18 training images: 5 shards; 6 validation images: 2 shards


def _wds_train(shards: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "wds", "--data-dir", str(shards), "--model", "resnet_tiny", "--img-size", "16",
            "--batch-size", "4", "--no-progress", "--out", str(out), *extra]


def _kill_after_first_epoch(command: list[str], out: Path) -> None:
    """Run ``command`` and SIGKILL it as soon as its first epoch is committed (the test needs a kill mid-run)."""
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 300
    while job.poll() is None and time.monotonic() < deadline:
        if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip():
            job.kill()
            break
        time.sleep(0.02)
    job.communicate(timeout=60)
    assert len(_metrics(out)) < 3, "the run ended before it could be killed"


def test_shards_train_kill_resume_exactly_and_evaluate(shards: Path, tmp_path: Path) -> None:
    """An epoch of 160 images over 18 (several passes: each a new shard permutation and shuffle); killed after
    epoch 1 and resumed, the run ends with the metrics and weights of one never interrupted."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    recipe = ("--epochs", "3", "--epoch-size", "160", "--workers", "1")
    result = subprocess.run(_botnet(*_wds_train(shards, straight, *recipe)), capture_output=True, text=True,
                            env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    _kill_after_first_epoch(_botnet(*_wds_train(shards, killed, *recipe)), killed)
    result = subprocess.run(_botnet("train", "--resume", str(killed)), capture_output=True, text=True, env=_env(),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _deterministic(killed) == _deterministic(straight)
    _same_weights(killed, straight)
    assert sum(r["bad_images"] for r in _metrics(straight)) == 1  # the truncated JPEG, met when read, reported once
    config = json.loads((straight / "config.json").read_text())
    assert config["data"]["train_shards"] == 5 and config["data"]["train_size"] == 160

    evaluated = subprocess.run(_botnet("eval", "--checkpoint", str(straight / "last.safetensors"), "--data-dir", str(shards), "--json",
                                       "--workers", "1"), capture_output=True, text=True, env=_env(), timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    payload = json.loads(evaluated.stdout)
    assert payload["images"] == 6 and payload["top1"] == pytest.approx(_metrics(straight)[-1]["val_acc"])
    pattern = subprocess.run(_botnet("eval", "--checkpoint", str(straight / "last.safetensors"), "--dataset", "wds",
                                     "--data-dir", str(shards / "val-{000000..000001}.tar"), "--json"),
                             capture_output=True, text=True, env=_env(), timeout=300)
    assert pattern.returncode == 0, pattern.stderr[-2000:]
    assert {k: json.loads(pattern.stdout)[k] for k in ("images", "top1", "loss")} == \
        {k: payload[k] for k in ("images", "top1", "loss")}  # a shard pattern reads the same images


def test_shards_under_two_processes_take_equal_steps_and_gather_bad_files(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        _torchrun("--standalone", "--nproc-per-node", "2") + _wds_train(shards, out, "--epochs", "2", "--workers", "2"),
        capture_output=True, text=True, env=_env(), timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert result.stdout.count("skipped unreadable image") == 1  # met by one rank, printed by rank 0 once
    assert len((out / "bad_images.jsonl").read_text().splitlines()) == 1
    assert [r["epoch"] for r in _metrics(out)] == [1, 2]


@pytest.mark.parametrize("damage,expected", [
    ("missing shard", "not found"),
    ("truncated tar", "truncated or changed"),
    ("classes disagree", "index and the shards disagree"),
    ("pattern without epoch size", "needs --epoch-size"),
    ("mistyped directory", "no such directory"),
])
def test_damaged_shards_are_one_line_errors(shards: Path, tmp_path: Path, damage: str, expected: str) -> None:
    extra: list[str] = []
    data_dir = str(shards)
    if damage == "missing shard":
        (shards / "train-000003.tar").unlink()
    elif damage == "truncated tar":
        shard = shards / "train-000001.tar"
        shard.write_bytes(shard.read_bytes()[:3000])
    elif damage == "classes disagree":
        index = json.loads((shards / "index.json").read_text())
        index["classes"] = index["classes"][:1]
        (shards / "index.json").write_text(json.dumps(index))
        extra = ["--workers", "1"]  # raised in a loader worker: still one line
    elif damage == "mistyped directory":
        data_dir = str(shards) + "-typo"
    else:
        data_dir = str(shards / "train-{000000..000004}.tar")
        extra = ["--num-classes", "3", "--val-data-dir", str(shards / "val-{000000..000001}.tar")]
    out = tmp_path / "run"
    args = _wds_train(shards, out, "--epochs", "1", *extra)
    args[args.index("--data-dir") + 1] = data_dir
    result = subprocess.run(_botnet(*args), capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 2
    assert expected in _one_error_line(result.stderr)
    assert not (out / "last.pt").exists()


# --------------------------------------------------------------------------- resuming by itself


def _digits(out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "resnet_tiny", "--img-size", "16", "--batch-size", "16", "--epoch-size", "256",
            "--no-progress", "--out", str(out), *extra]


def test_resume_auto_starts_or_continues_the_run_in_out(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.run(_botnet(*_digits(out, "--epochs", "1", "--resume", "auto")), capture_output=True, text=True,
                           env=_env(), timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(_botnet(*_digits(out, "--epochs", "2", "--resume", "auto")), capture_output=True, text=True,
                           env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after epoch 1" in again.stdout and [r["epoch"] for r in _metrics(out)] == [1, 2]
    nowhere = subprocess.run(_botnet("train", "--resume", "auto", "--epochs", "1"), capture_output=True, text=True,
                             env=_env(), timeout=120)
    assert nowhere.returncode == 2 and "needs --out" in _one_error_line(nowhere.stderr)


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One node, two gloo processes, never interrupted: what the elastic and two-node runs must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2") + _digits(out, "--epochs", "4"),
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _rank_process(parent: int, rank: str) -> int | None:
    import psutil

    for child in psutil.Process(parent).children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "botnet" in " ".join(child.cmdline()):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_elastic_restart_after_a_killed_rank_resumes_by_itself(two_process_reference: Path, tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    out = tmp_path / "run"
    # --dist-timeout: a restarted group whose ranks fail to connect (seen once in about ten runs: both ranks waiting
    # in gloo's connect) fails after 60 s and torchrun starts it again, as it would for any lost worker.
    command = _torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "2", "--monitor-interval", "0.2") \
        + _digits(out, "--epochs", "4", "--dist-timeout", "60")
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    killed = False
    deadline = time.monotonic() + 300
    while job.poll() is None and time.monotonic() < deadline and not killed:
        if (out / "metrics.jsonl").is_file() and _metrics(out):  # epoch 1 committed: kill rank 1 mid-run
            pid = _rank_process(job.pid, "1")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.05)
    try:
        stdout, stderr = job.communicate(timeout=400)
    finally:
        job.kill()  # never leave a hung group behind
    assert killed, "the job ended before a rank could be killed"
    assert job.returncode == 0, stderr[-3000:]
    assert "resuming after epoch" in stdout  # the restarted group continued the run in --out
    assert _deterministic(out) == _deterministic(two_process_reference)
    _same_weights(out, two_process_reference)


def test_two_nodes_train_as_one_node_with_two_processes(two_process_reference: Path, tmp_path: Path) -> None:
    out, port = tmp_path / "run", str(_free_port())
    nodes = [
        subprocess.Popen(_torchrun("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr",
                                   "127.0.0.1", "--master-port", port) + _digits(out, "--epochs", "4"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert _deterministic(out) == _deterministic(two_process_reference)
    _same_weights(out, two_process_reference)


# --------------------------------------------------------------------------- the paper's recipe as files


@pytest.mark.parametrize("name,model", [("imagenet_botnet50.yaml", "botnet50"), ("imagenet_resnet50.yaml", "resnet50"),
                                        ("imagenet_botnet50_wds.yaml", "botnet50")])
def test_imagenet_recipe_files_parse(name: str, model: str) -> None:
    from botnet.classification.train import TrainConfig

    settings = load_config_file(CONFIGS / name, TrainConfig)
    assert settings["model"] == model and settings["img_size"] == 224
    twin = load_config_file(CONFIGS / "imagenet_botnet50.yaml", TrainConfig)
    assert {k: v for k, v in settings.items() if k not in ("model", "dataset")} == \
        {k: v for k, v in twin.items() if k not in ("model", "dataset")}  # the twins differ in the model only


@pytest.mark.parametrize("name", ["imagenet_botnet50.yaml", "imagenet_botnet50_wds.yaml"])
def test_imagenet_recipe_trains_a_few_steps(name: str, tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imagenet", {"train": 4, "val": 1}, classes=("n01440764", "n01443537"),
                        size=(75, 100))
    data_dir = root
    if "wds" in name:
        data_dir = tmp_path / "shards"
        from botnet.classification.shards import pack_folder

        pack_folder(root, data_dir, shard_size=4, progress=False)
    out = tmp_path / "run"
    result = subprocess.run(
        _botnet("train", "-c", str(CONFIGS / name), "--data-dir", str(data_dir), "--img-size", "64", "--batch-size",
                "2", "--epoch-size", "4", "--epochs", "1", "--workers", "0", "--no-progress", "--out", str(out)),
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["model"] == "botnet50" and len(_metrics(out)) == 1


def test_a_node_that_cannot_reach_the_rendezvous_ends_with_torchruns_message(tmp_path: Path) -> None:
    """One of two nodes never comes: torchrun's c10d rendezvous gives up after join_timeout, no hang."""
    start = time.monotonic()
    result = subprocess.run(
        _torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                  f"127.0.0.1:{_free_port()}", "--rdzv-conf", "join_timeout=3") + _digits(tmp_path / "run", "--epochs",
                                                                                         "1"),
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert result.returncode != 0 and "RendezvousTimeoutError" in result.stderr
    assert time.monotonic() - start < 100
    assert not (tmp_path / "run").exists()
