"""Which files are read: hidden entries in dataset folders; predict's files, folders and globs; unreadable files.

Before: a hidden ``.thumbnails/`` folder holding an image became a class,
``train/cat/.cache/x.jpg`` a sample; ``botnet predict DIR`` said "no image
file at 'DIR'"; one unreadable file stopped ``botnet predict`` for all.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

import botnet
from botnet.checkpoint import save_model
from botnet.cli import main


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def _image(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), colour).save(path)


# --------------------------------------------------------------------------- dataset folders

VISIBLE = ["cat/a.png", "cat/b.png", "cat/sub/c.png", "dog/d.png", "dog/e.png"]

# Hidden entries at every depth, each of which today becomes a class or a sample.
HIDDEN = [".thumbnails/x.png", "cat/.hidden.png", "cat/.cache/y.png", "cat/sub/.z/w.png", "._dog/v.png",
          "dog/._e.png"]


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("reader", ["folder", "pack"])
def test_hidden_entries_are_never_classes_or_samples(tmp_path, hidden, reader):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in [*VISIBLE, hidden]:
            _image(root / split / name)
    if reader == "folder":
        from botnet.classification.data import build_data

        data = build_data("folder", root, img_size=8)
        classes = data.class_names
        samples = {split: [str(Path(p).relative_to(root / split)) for p, _ in getattr(data, split).samples]
                   for split in ("train", "val")}
    else:
        pytest.importorskip("webdataset")
        from botnet.classification.shards import pack_folder

        pack_folder(root, tmp_path / "packed", shard_size=100, progress=False)
        index = json.loads((tmp_path / "packed" / "index.json").read_text())
        classes = index["classes"]
        samples = {split: sum(index["splits"][split]["per_class"]) for split in ("train", "val")}
    assert classes == ["cat", "dog"]
    if reader == "folder":
        assert samples == {"train": VISIBLE, "val": VISIBLE}
    else:
        assert samples == {"train": len(VISIBLE), "val": len(VISIBLE)}


# (layout, the piece of the one-line error); today each trains on hidden files as data.
FOLDER_ERRORS = [
    ([".thumbnails/x.png", ".git/y.png"], "has no class sub-directory (hidden ones do not count"),
    (["cat/.hidden.png", "dog/d.png"], "class directory 'cat' holds no image file"),
    (["cat/.cache/x.png", "dog/d.png"], "class directory 'cat' holds no image file"),
]


@pytest.mark.parametrize(("layout", "message"), FOLDER_ERRORS)
def test_a_folder_of_only_hidden_entries_is_one_line(tmp_path, capsys, layout, message):
    for name in layout:
        _image(tmp_path / "data" / name)
    code = _run(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--img-size", "8",
                 "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("botnet train: error: ") and message in lines[0], err


# --------------------------------------------------------------------------- predict inputs


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    for name in ("photos/a.png", "photos/b.jpg", "photos/sub/c.png", "photos/.thumbnails/t.png",
                 "photos/.hidden.png", "photos/sub/.cache/d.png"):
        _image(root / name)
    (root / "photos" / "notes.txt").write_text("not an image")
    (root / "bad").mkdir()
    (root / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "empty").mkdir()
    model = botnet.create_model("botnet_tiny", num_classes=3)
    save_model(root / "model.safetensors", model, class_names=["a", "b", "c"], img_size=[32, 32],
               mean=[0.5] * 3, std=[0.25] * 3, dataset="digits")
    return root


A, B, C, BROKEN = "photos/a.png", "photos/b.jpg", "photos/sub/c.png", "bad/broken.png"
# (inputs, exit code, [(file, error piece or None)] in output order, piece of the one stderr line or None)
PREDICT = [
    (["photos"], 0, [(A, None), (B, None), (C, None)], None),  # recursive, sorted, images only, hidden skipped
    (["photos/*.png"], 0, [(A, None)], None),  # a glob; .hidden.png is not matched
    (["photos/**/*.png"], 0, [(A, None), (C, None)], None),  # recursive glob; hidden folders skipped
    (["photos/*"], 0, [(A, None), (B, None), (C, None)], None),  # folders matched by a glob are expanded
    ([B, "photos"], 0, [(B, None), (A, None), (C, None)], None),  # each file once, at its first mention
    ([A, BROKEN], 0, [(A, None), (BROKEN, "cannot read image")], "warning: 1 of 2 inputs could not be read"),
    ([A, "missing.png"], 0, [(A, None), ("missing.png", "no image or folder at")],
     "warning: 1 of 2 inputs could not be read"),
    ([A, "empty"], 0, [(A, None), ("empty", "no image file in folder")], "warning: 1 of 2"),
    ([BROKEN], 2, [(BROKEN, "cannot read image")], "error: no image could be read (1 listed in the output)"),
    (["photos/notes.txt"], 2, [("photos/notes.txt", "cannot read image")], "error: no image could be read"),
    (["empty"], 2, None, "error: no image file in folder"),  # nothing matched: one line, no output
    (["nothing/*.png"], 2, None, "error: no image file matches"),
    (["missing.png", "empty"], 2, None, "error: no image or folder at"),
]


def _records(mode: str, stdout: str) -> list[tuple[str, str | None]]:
    if mode == "--json":
        return [(p["image"], p["error"]) for p in json.loads(stdout)["predictions"]]
    rows = list(csv.DictReader(io.StringIO(stdout)))
    return [(row["image"], row["error"] or None) for row in rows]


@pytest.mark.parametrize(("inputs", "code", "expected", "stderr"), PREDICT,
                         ids=[" ".join(case[0]) for case in PREDICT])
@pytest.mark.parametrize("mode", ["--json", "--csv", "table"])
def test_predict_reads_files_folders_and_globs_and_lists_unreadable_files(
        place, capsys, monkeypatch, mode, inputs, code, expected, stderr):
    monkeypatch.chdir(place)  # relative inputs, so globs and output paths read as a user types them
    argv = ["predict", "--checkpoint", "model.safetensors", *inputs, "--topk", "2"]
    assert _run(argv + ([mode] if mode != "table" else [])) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if stderr is None:
        assert lines == [], err
    else:
        assert len(lines) == 1 and lines[0].startswith("botnet predict: ") and stderr in lines[0], err
    if expected is None:
        assert out == ""
        return
    if mode == "table":
        for path, error in expected:
            assert Path(path).name in out
            assert ("not read:" in out) == any(e for _, e in expected)
        return
    records = _records(mode, out)
    assert [path for path, _ in records] == [path for path, _ in expected]
    for (_, error), (_, piece) in zip(records, expected):
        assert (error is None) if piece is None else (piece in error), (error, piece)
    if mode == "--csv":
        header = next(csv.reader(io.StringIO(out)))
        assert header == ["image", "label_1", "probability_1", "label_2", "probability_2", "error"]


def test_detect_predict_shares_the_inputs_and_the_exit_rule(tmp_path, place, capsys):
    pytest.importorskip("pycocotools")
    from botnet.detection.checkpoint import detector_meta, save_detector
    from botnet.detection.models import DetectorConfig, build_from_config

    config = DetectorConfig(
        arch="fasterrcnn", backbone="botnet_tiny", num_classes=3, norm="frozen", returned_layers=[2, 3, 4],
        fpn_channels=16, box_head_size=16, backbone_kwargs={"ref_img_size": 32},
        detector_kwargs={"min_size": 32, "max_size": 32},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_from_config(config).eval()
    save_detector(tmp_path / "det.safetensors", model,
                  detector_meta(model, config, class_names=["a", "b"], category_ids=[1, 2]))
    shutil.copytree(place / "photos", tmp_path / "photos")
    shutil.copy(place / BROKEN, tmp_path / "photos" / "broken.png")
    shutil.copy(place / A, tmp_path / "photos" / "sub" / "a.png")  # same stem as photos/a.png
    base = ["detect", "predict", "--checkpoint", str(tmp_path / "det.safetensors"), "--out", str(tmp_path / "out"),
            "--device", "cpu"]
    code = _run([*base, str(tmp_path / "photos"), "--json", str(tmp_path / "d.json")])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("botnet detect: warning: 1 of 5 inputs could not be read"), err
    records = json.loads((tmp_path / "d.json").read_text())
    names = [str(Path(r["image"]).relative_to(tmp_path / "photos")) for r in records]
    assert names == ["a.png", "b.jpg", "broken.png", "sub/a.png", "sub/c.png"]
    assert [r["error"] is None for r in records] == [True, True, False, True, True]
    assert [Path(r["png"]).name if r["png"] else None for r in records] == [
        "a_det.png", "b_det.png", None, "a_det-2.png", "c_det.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_det-2.png", "a_det.png", "b_det.png",
                                                                    "c_det.png"]

    code = _run([*base, str(tmp_path / "photos" / "broken.png")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("botnet detect: error: no image could be read (1 listed in the output)"), err
