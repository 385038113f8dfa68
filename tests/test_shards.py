"""Tar shards: `botnet data pack` keeps every file's bytes and label; the reader splits, shuffles and fails clearly."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from botnet.images import decode_image, read_image

wds = pytest.importorskip("webdataset")

from botnet.classification.shards import (
    ShardDataset,
    pack_folder,
    shard_loader,
    shard_spec,
)

CLASSES = ["cat", "dog", "eel"]
PER_CLASS = {"train": 8, "val": 3}


def _photo() -> np.ndarray:
    try:
        from skimage import data

        return data.astronaut()  # (512, 512, 3) uint8, a real photograph
    except ImportError:
        y, x = np.mgrid[0:512, 0:512]
        return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def _make_folder(root: Path) -> None:
    photo, rng = _photo(), np.random.default_rng(0)
    for split, count in PER_CLASS.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                y, x = rng.integers(0, 512 - 48, 2)
                crop = Image.fromarray(photo[y : y + 40, x : x + 48])
                if split == "train" and name == "dog" and i == 0:
                    crop.save(folder / "z.png")  # not JPEG: kept as PNG
                else:
                    crop.save(folder / f"{name}.{i}.JPEG", quality=85)  # dots in the name, upper-case suffix
    (root / "train" / ".cache").mkdir()  # hidden: not a class
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden: not an image
    (root / "val" / ".cache").mkdir()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    _make_folder(root)
    return root


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "shards"
    pack_folder(folder, out, shard_size=3, progress=False)  # 24 training images: 8 shards of 3
    return out


def _iterate(dataset, num_workers: int = 0) -> list[tuple]:
    if num_workers == 0:
        return list(dataset)
    return list(shard_loader(dataset, batch_size=None, num_workers=num_workers))


def _keys(dataset, num_workers: int = 0) -> list[str]:
    return [sample[2] for sample in _iterate(dataset, num_workers)]


# --------------------------------------------------------------------------- packing


def test_pack_keeps_original_bytes_labels_and_classes(folder, packed):
    from torchvision.datasets import ImageFolder

    index = json.loads((packed / "index.json").read_text())
    assert index["format"] == "botnet-wds" and index["version"] == 1 and index["shard_size"] == 3
    assert index["classes"] == CLASSES
    for split in ("train", "val"):
        reference = ImageFolder(str(folder / split), loader=lambda p: p, allow_empty=True)  # ImageFolder order
        assert reference.classes[1:] == CLASSES  # torchvision counts ".cache" as a class; pack does not
        files = [(path, label - 1) for path, label in reference.samples]
        entry = index["splits"][split]
        assert entry["count"] == len(files) == 3 * PER_CLASS[split]
        assert entry["per_class"] == [PER_CLASS[split]] * 3
        assert entry["shards"] == [f"{split}-{i:06d}.tar" for i in range(len(entry["shards"]))]
        seen = {}
        for name, count, size in zip(entry["shards"], entry["shard_counts"], entry["shard_bytes"]):
            assert (packed / name).stat().st_size == size
            with tarfile.open(packed / name) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            keys = {m.rsplit(".", 1)[0] for m in members}
            assert len(keys) == count
            for key in keys:
                n = int(key.split("-")[1])
                path, label = files[n]
                image_entry = [m for m in members if m.startswith(key + ".") and not m.endswith(".cls")]
                assert len(image_entry) == 1
                assert image_entry[0].endswith(".png" if path.endswith(".png") else ".jpg")
                assert members[image_entry[0]] == Path(path).read_bytes()  # byte for byte, not re-encoded
                assert members[key + ".cls"] == str(label).encode()
                seen[key] = label
        assert len(seen) == len(files)  # every file once
    assert not [p for p in packed.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_pack_is_deterministic_and_replaces_an_earlier_pack(folder, packed, tmp_path):
    again = tmp_path / "again"
    pack_folder(folder, again, shard_size=3, progress=False)
    for name in sorted(p.name for p in packed.iterdir()):
        assert (again / name).read_bytes() == (packed / name).read_bytes()
    # Re-packing with bigger shards into the same directory leaves no stale shard behind.
    index = pack_folder(folder, again, shard_size=10, progress=False)
    assert sorted(p.name for p in again.iterdir()) == sorted(
        ["index.json", "_info.json"] + index["splits"]["train"]["shards"] + index["splits"]["val"]["shards"])
    assert len(index["splits"]["train"]["shards"]) == 3


def test_timm_reads_a_pack(packed):
    # The same directory is a timm `wds/` dataset (its _info.json): same labels, every sample.
    timm_data = pytest.importorskip("timm.data")
    dataset = timm_data.create_dataset("wds/packed", root=str(packed), split="val", is_training=False, batch_size=1)
    labels = Counter(int(label) for _, label in dataset)
    assert labels == Counter({0: 3, 1: 3, 2: 3})


def test_pack_refuses_bad_layouts(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no train/"):
        pack_folder(folder / "train", tmp_path / "o1", progress=False)
    odd = tmp_path / "odd"
    shutil.copytree(folder, odd)
    (odd / "val" / "fox").mkdir()
    Image.new("RGB", (8, 8)).save(odd / "val" / "fox" / "a.jpg")
    with pytest.raises(ValueError, match="class directories differ.*only in val: \\['fox'\\]"):
        pack_folder(odd, tmp_path / "o2", progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        pack_folder(folder, busy, progress=False)
    with pytest.raises(ValueError, match="shard size"):
        pack_folder(folder, tmp_path / "o3", shard_size=0, progress=False)


def test_decode_from_bytes_equals_read_image(folder, tmp_path):
    path = next((folder / "train" / "cat").glob("*.JPEG"))
    data = path.read_bytes()
    assert torch.equal(decode_image(data), read_image(path))
    assert torch.equal(decode_image(io.BytesIO(data), channels=1), read_image(path, channels=1))
    png = folder / "train" / "dog" / "z.png"
    assert torch.equal(decode_image(png.read_bytes()), read_image(png))
    # EXIF orientation is applied the same way from bytes and from the file.
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.open(path).save(rotated, exif=exif)
    from_file = read_image(rotated)
    assert from_file.shape[1:] == (48, 40)  # upright: the stored 40x48 turned
    assert torch.equal(decode_image(rotated.read_bytes()), from_file)
    with pytest.raises(ValueError, match="sample-7"):
        decode_image(data[: len(data) // 2], name="sample-7")


# --------------------------------------------------------------------------- reading


def test_ranks_and_workers_read_disjoint_shards_covering_every_sample(packed):
    per_rank = []
    for rank in range(2):
        dataset = ShardDataset(packed, rank=rank, world_size=2, shuffle=5, seed=3, epoch_size=24, return_keys=True)
        keys = _keys(dataset, num_workers=2)
        assert len(keys) == len(dataset) == 12
        per_rank.append(keys)
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == [f"train-{n:08d}" for n in range(24)]  # each exactly once


def test_every_rank_yields_epoch_size_over_world_size(packed):
    # 24 images, 30 per epoch: readers wrap around to a new pass over the shuffled shards.
    batches = []
    for rank in range(2):
        dataset = ShardDataset(packed, rank=rank, world_size=2, shuffle=4, epoch_size=31)
        loader = shard_loader(dataset, batch_size=4, num_workers=2)
        sizes = [len(labels) for _, labels in loader]
        assert sum(sizes) == len(dataset) == 15
        batches.append(sizes)
    assert batches[0] == batches[1]  # the same number of steps on every rank


def test_order_is_a_function_of_seed_and_epoch(packed):
    def keys(epoch: int, seed: int = 0) -> list[str]:
        dataset = ShardDataset(packed, shuffle=6, seed=seed, return_keys=True)
        dataset.set_epoch(epoch)
        return _keys(dataset, num_workers=2)

    first = keys(0)
    assert sorted(first) == [f"train-{n:08d}" for n in range(24)]
    assert keys(0) == first  # bit-exact again, with 2 workers
    assert keys(1) != first and sorted(keys(1)) == sorted(first)
    assert keys(0, seed=1) != first
    # A resumed run (a fresh dataset at epoch 1) reads what the uninterrupted run reads at epoch 1.
    dataset = ShardDataset(packed, shuffle=6, return_keys=True)
    _keys(dataset, num_workers=2)
    dataset.set_epoch(1)
    assert _keys(dataset, num_workers=2) == keys(1)
    # The images and labels follow the keys.
    images = [(img, label) for img, label in ShardDataset(packed, shuffle=6)]
    again = [(img, label) for img, label in ShardDataset(packed, shuffle=6)]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(images, again))


def test_pipe_urls_brace_patterns_and_the_rank_from_the_environment(packed, monkeypatch):
    # A pipe: pattern (how object stores are read: `pipe:aws s3 cp s3://.../train-{...}.tar -`).
    pattern = f"pipe:cat {packed}/train-{{000000..000007}}.tar"
    spec = shard_spec(pattern)
    assert len(spec.urls) == 8 and spec.urls[3] == f"pipe:cat {packed}/train-000003.tar" and spec.count is None
    keys = _keys(ShardDataset(pattern, shuffle=4, return_keys=True, classes=CLASSES))
    assert sorted(keys) == [f"train-{n:08d}" for n in range(24)]
    # Without explicit rank/world_size: torch.distributed's, or RANK / WORLD_SIZE as webdataset reads them.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dataset = ShardDataset(packed)
    assert (dataset.rank, dataset.world_size, len(dataset)) == (1, 2, 12)
    with pytest.raises(ValueError, match="epoch_size is needed"):
        ShardDataset(pattern)


def _alarm(seconds: int):
    def fail(*_):
        raise TimeoutError("the loader hung")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_fewer_shards_than_readers_errors_or_resamples(folder, tmp_path):
    out = tmp_path / "one"
    pack_folder(folder, out, shard_size=100, progress=False)  # one training shard
    dataset = ShardDataset(out, rank=0, world_size=2, epoch_size=24)
    with pytest.raises(ValueError, match=r"1 shard\(s\) .* 2 rank\(s\) x 2 worker\(s\) = 4 readers") as err:
        shard_loader(dataset, batch_size=2, num_workers=2)
    assert "\n" not in str(err.value)
    _alarm(60)
    try:
        with pytest.raises(ValueError, match="4 readers"):  # a plain DataLoader: the workers raise, no hang
            list(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2))
        resampled = ShardDataset(out, rank=1, world_size=2, epoch_size=24, resampled=True, return_keys=True)
        keys = _keys(resampled, num_workers=2)
        assert len(keys) == 12 and keys == _keys(resampled, num_workers=2)
    finally:
        signal.alarm(0)


def test_damaged_inputs_are_one_line_errors_naming_the_file(packed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    shard = copy / "train-000002.tar"
    with tarfile.open(shard) as tar:
        second = tar.getmembers()[2]  # cut inside the data of the second sample's first entry
    shard.write_bytes(shard.read_bytes()[: second.offset_data + second.size // 2])
    with pytest.raises(ValueError, match=r"train-000002\.tar' is truncated or changed") as err:
        list(ShardDataset(copy, shuffle=0))
    assert "\n" not in str(err.value)
    # Without an index: a tar cut inside an entry fails in the tar reader, still naming the shard.
    with pytest.raises(ValueError, match=r"train-000002\.tar' is damaged or unreadable"):
        list(ShardDataset([str(shard)], shuffle=0))
    # Missing shard: at construction, and if it vanishes later.
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"shard '.*train-000002\.tar' not found"):
        ShardDataset(copy)
    dataset = ShardDataset(str(packed / "train-{000000..000007}.tar"), shuffle=0)
    moved = tmp_path / "moved.tar"
    shutil.move(packed / "train-000005.tar", moved)
    try:
        with pytest.raises(FileNotFoundError, match=r"train-000005\.tar' not found"):
            list(dataset)
    finally:
        shutil.move(moved, packed / "train-000005.tar")
    # An index whose classes disagree with the labels in the shards.
    index = json.loads((copy / "index.json").read_text())
    index["classes"] = index["classes"][:2]
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"label 2 but index\.json lists 2 classes"):
        list(ShardDataset(copy, split="val", shuffle=0))
    (copy / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no index.json in"):
        ShardDataset(copy)


def _write_shard(path: Path, samples: list[tuple[str, bytes, int]]) -> None:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for key, data, label in samples:
            sink.write({"__key__": key, "jpg": data, "cls": str(label).encode()})


def test_corrupt_image_is_skipped_with_its_replacements_own_label_or_raises(folder, tmp_path):
    good = [p.read_bytes() for p in sorted((folder / "train" / "cat").glob("*.JPEG"))]
    corrupt = good[0][: len(good[0]) // 3]  # a truncated JPEG
    shard = tmp_path / "bad.tar"
    _write_shard(shard, [("k0", good[0], 0), ("k1", good[1], 1), ("k2", corrupt, 2), ("k3", good[2], 0)])
    log = tmp_path / "skipped.jsonl"
    dataset = ShardDataset([str(shard)], shuffle=0, bad_images="skip", return_keys=True, skip_log=log)
    out = list(dataset)
    assert [(label, key) for _, label, key in out] == [(0, "k0"), (1, "k1"), (1, "k1"), (0, "k3")]
    assert torch.equal(out[2][0], decode_image(good[1]))  # k1's image with k1's label: never a wrong label
    assert [key for key, _ in dataset.skipped] == ["k2"] and "does not decode" in dataset.skipped[0][1]
    assert json.loads(log.read_text())["key"] == "k2"
    # The first sample of a shard is bad: replaced by the next good one of that shard.
    first = tmp_path / "first.tar"
    _write_shard(first, [("k0", corrupt, 2), ("k1", good[1], 1)])
    out = list(ShardDataset([str(first)], shuffle=0, bad_images="skip", return_keys=True))
    assert [(label, key) for _, label, key in out] == [(1, "k1"), (1, "k1")]
    with pytest.raises(ValueError, match=r"bad\.tar:k2\.jpg.*sample 'k2', label 2") as err:
        list(ShardDataset([str(shard)], shuffle=0, bad_images="error"))
    assert "\n" not in str(err.value)
    # With workers and a policy callable: the same outcome, one skip recorded in the log file.
    log.unlink()
    seen = []
    dataset = ShardDataset([str(shard), str(first)], shuffle=0, bad_images=lambda bad: seen.append(bad) or "skip",
                           return_keys=True, skip_log=log)
    keys = _keys(dataset, num_workers=2)
    assert Counter(keys) == Counter(["k0", "k1", "k1", "k3", "k1", "k1"])
    assert sorted(json.loads(line)["key"] for line in log.read_text().splitlines()) == ["k0", "k2"]


# --------------------------------------------------------------------------- CLI


def test_cli_pack_exit_codes(folder, tmp_path, capsys):
    from botnet.cli import main

    # The installed entry point, end to end, once.
    proc = subprocess.run([sys.executable, "-m", "botnet", "data", "pack", str(folder), "--out", str(tmp_path / "out"),
                           "--shard-size", "10"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "│      3 │     24 │       3" in proc.stdout  # shards, images, classes
    assert shard_spec(tmp_path / "out").count == 24
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    for args, message in [
        ([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "is not a directory"),
        ([str(folder / "val"), "--out", str(tmp_path / "o")], "has no train/"),
        ([str(folder), "--out", str(tmp_path / "junk")], "holds other files"),
        ([str(folder), "--out", str(tmp_path / "o"), "--shard-size", "0"], "--shard-size"),
    ]:
        try:
            code = main(["data", "pack", *args])
        except SystemExit as stop:  # argparse's own exit (bad option values)
            code = int(stop.code)
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("botnet data") and message in lines[0], err
        assert "Traceback" not in err
