"""Bad invocations of every subcommand: exit code 2, one line on stderr, no traceback; shared flags; -c files."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from PIL import Image

import botnet
from botnet.checkpoint import save_model
from botnet.cli import build_parser, main
from botnet.training import RunConfig

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "file.txt").write_text("a regular file")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(root / "img.png")
    model = botnet.create_model("botnet_tiny", num_classes=3)
    save_model(root / "model.safetensors", model, class_names=["a", "b", "c"], img_size=[32, 32],
               mean=[0.5] * 3, std=[0.25] * 3, dataset="digits")
    (root / "bad.yaml").write_text("epochs: [1, 2\n")
    (root / "unknown.yaml").write_text("epochs: 1\nlearning_rate: 0.1\n")
    (root / "badvalue.yaml").write_text("lr: -3\n")
    (root / "list.yaml").write_text("- epochs\n")
    return root


def _cases(root) -> list[tuple[list[str], str]]:
    """(argv, a piece of the expected message)."""
    f, img, ckpt = str(root / "file.txt"), str(root / "img.png"), str(root / "model.safetensors")
    under_file = str(root / "file.txt" / "out")
    cases = [
        (["info", "botnet5O"], "did you mean"),
        (["info", "botnet50", "--img-size", "0", "32"], "--img-size"),
        (["info", "botnet50", "--num-classes", "-1"], "--num-classes"),
        (["info", "botnet50", "--img-size", "16", "16"], "too small"),
        (["train", "--lr", "nan"], "--lr: must be a finite number"),
        (["train", "--lr", "-0.1"], "--lr: must be a finite number > 0"),
        (["train", "--lr", "abc"], "--lr: must be a number"),
        (["train", "--img-size", "0"], "--img-size"),
        (["train", "--img-size", "-5"], "--img-size"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "2.5"], "--batch-size"),
        (["train", "--momentum", "1.5"], "--momentum"),
        (["train", "--label-smoothing", "1"], "--label-smoothing"),
        (["train", "--val-fraction", "0"], "--val-fraction"),
        (["train", "--warmup-epochs", "-1"], "--warmup-epochs"),
        (["train", "--clip-grad", "inf"], "--clip-grad"),
        (["train", "--workers", "-1"], "--workers"),
        (["train", "--in-chans", "2"], "--in-chans"),
        (["train", "--decay-milestones", "3", "-1"], "--decay-milestones"),
        (["train", "--batch-size", "4", "--accum-steps", "3", "--out", str(root / "r1")], "--accum-steps"),
        (["train", "--device", "gpu7"], "--device"),
        (["train", "--out", under_file], "is a file, not a directory"),
        (["train", "--out", f], "not a directory"),
        (["train", "--dataset", "folder", "--out", str(root / "r2")], "--data-dir"),
        (["train", "--dataset", "fashion-mnist", "--data-dir", str(root / "nowhere"), "--out", str(root / "r3")],
         "nowhere"),
        (["train", "--model", "nosuchnet", "--out", str(root / "r4"), "--epochs", "1"], "unknown model"),
        (["train", "--resume", str(root / "nowhere")], "no such run directory"),
        (["train", "--resume", str(root)], "is not a run directory"),
        (["train", "-c", str(root / "missing.yaml")], "no config file"),
        (["train", "-c", str(root / "bad.yaml")], "not valid YAML"),
        (["train", "-c", str(root / "unknown.yaml")], "unknown key 'learning_rate'"),
        (["train", "-c", str(root / "badvalue.yaml")], "key 'lr' must be a finite number > 0"),
        (["train", "-c", str(root / "list.yaml")], "expected a mapping"),
        (["data", "pack", str(root / "nowhere"), "--out", str(root / "packed")], "is not a directory"),
        (["data", "pack", str(root), "--out", str(root / "packed")], "has no train/"),
        (["data", "pack", str(root), "--out", str(root / "packed"), "--shard-size", "0"], "--shard-size"),
        (["eval", "--checkpoint", str(root / "none.pt")], "none.pt"),
        (["eval", "--checkpoint", ckpt, "--batch-size", "0"], "--batch-size"),
        (["eval", "--checkpoint", ckpt, "--workers", "x"], "--workers"),
        (["eval", "--checkpoint", f], "damaged"),
        (["predict", "--checkpoint", ckpt, str(root / "nope.png")], "nope.png"),
        (["predict", "--checkpoint", ckpt, img, "--topk", "0"], "--topk"),
        (["predict", "--checkpoint", ckpt, f], "cannot read image"),
        (["predict", "--checkpoint", ckpt, img, "--device", "tpu"], "--device"),
        (["export", "--format", "torchscript", "--out", str(root / "x.pt")], "--model"),
        (["export", "--model", "botnet_tiny", "--format", "torchscript", "--out", str(root / "x.pt"), "--img-size",
          "0", "8"], "--img-size"),
        (["export", "--model", "botnet_tiny", "--format", "torchscript", "--out", under_file], "is a file"),
        (["export", "--model", "botnet_tiny", "--format", "onnx", "--out", str(root / "x.onnx"), "--opset", "10"],
         "opset"),
        (["export", "--model", "botnet_tiny", "--format", "zip", "--out", str(root / "x")], "--format"),
        (["attention", "--model", "botnet_tiny", "--image", str(root / "nope.png"), "--out", str(root / "a.png")],
         "nope.png"),
        (["attention", "--model", "botnet_tiny", "--image", img, "--query", "1", "--out", str(root / "a.png")],
         "X Y pairs"),
        (["attention", "--model", "botnet_tiny", "--image", img, "--query", "-1", "2"], "--query"),
        (["attention", "--model", "botnet_tiny", "--image", img, "--dpi", "0"], "--dpi"),
        (["attention", "--model", "botnet_tiny", "--image", img, "--img-size", "-3"], "--img-size"),
        (["attention", "--model", "botnet_tiny", "--image", img, "--out", under_file + ".png"], "is a file"),
        (["attention", "--model", "botnet_tiny", "--image", img, "--out", str(root / "a.png"), "--layer", "9"],
         "layer"),
        (["plot", str(root / "nowhere")], "no metrics file"),
        (["detect", "make-synthetic", str(root / "s"), "--min-size", "10"], "min_size"),
        (["detect", "make-synthetic", str(root / "s"), "--max-objects", "0"], "--max-objects"),
        (["detect", "make-synthetic", under_file], "is a file"),
        (["detect", "train", "--lr", "nan"], "--lr"),
        (["detect", "train", "--trainable-layers", "7"], "--trainable-layers"),
        (["detect", "train", "--returned-layers", "5"], "--returned-layers"),
        (["detect", "train", "--min-size", "0"], "--min-size"),
        (["detect", "train", "--min-size", "100", "--max-size", "50", "--out", str(root / "d0")], "--max-size"),
        (["detect", "train", "--data", str(root / "nowhere"), "--out", str(root / "d1")], "no annotation file"),
        (["detect", "train", "--out", under_file], "is a file, not a directory"),
        (["detect", "train", "--resume", str(root / "nowhere")], "no such run directory"),
        (["detect", "eval", "--checkpoint", str(root / "none.pt"), "--data", str(root)], "none.pt"),
        (["detect", "eval", "--checkpoint", ckpt, "--data", str(root), "--max-images", "0"], "--max-images"),
        (["detect", "eval", "--checkpoint", ckpt, "--data", str(root)], "not a detector"),
        (["detect", "predict", img, "--checkpoint", ckpt, "--out", str(root / "p"), "--score-threshold", "2"],
         "--score-threshold"),
        (["detect", "predict", str(root / "nope.png"), "--checkpoint", ckpt, "--out", str(root / "p")], "nope.png"),
        (["detect", "predict", img, "--checkpoint", ckpt, "--out", under_file], "is a file"),
    ]
    if not CUDA:
        cases += [
            (["train", "--device", "cuda"], "CUDA is not available"),
            (["eval", "--checkpoint", ckpt, "--device", "cuda:0"], "CUDA is not available"),
            (["predict", "--checkpoint", ckpt, img, "--device", "cuda"], "CUDA is not available"),
            (["attention", "--model", "botnet_tiny", "--image", img, "--device", "cuda"], "CUDA is not available"),
            (["detect", "train", "--device", "cuda"], "CUDA is not available"),
            (["detect", "eval", "--checkpoint", ckpt, "--data", str(root), "--device", "cuda"], "CUDA is not available"),
        ]
    return cases


def test_every_subcommand_rejects_bad_input_in_one_line(place, capsys):
    pytest.importorskip("pycocotools")
    commands = {argv[0] if argv[0] != "detect" else f"detect {argv[1]}" for argv, _ in _cases(place)}
    assert commands >= {"info", "data", "train", "eval", "predict", "export", "attention", "plot", "detect make-synthetic",
                        "detect train", "detect eval", "detect predict"}
    for argv, expected in _cases(place):
        code = _run(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("botnet "), (argv, err)
        assert expected in lines[0], (argv, expected, err)
        assert "Traceback" not in err


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own exit (bad option values)
        return int(stop.code)


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...]]:
    return {a.dest: tuple(sorted(a.option_strings)) for a in parser._actions if a.option_strings}


def test_train_and_detect_train_share_every_shared_setting():
    parser = build_parser()
    classify, detect = _options(_subparser(parser, "train")), _options(_subparser(parser, "detect", "train"))
    shared = [spec.name for spec in dataclasses.fields(RunConfig)]
    for name in shared + ["config", "resume"]:
        assert classify[name] == detect[name], name
    # timm's names where timm has one.
    for flag in ("--opt", "--lr", "--weight-decay", "--momentum", "--epochs", "-b", "--batch-size", "--warmup-epochs",
                 "--clip-grad", "-j", "--workers", "--amp", "--amp-dtype", "--compile", "--seed", "--device", "--out",
                 "--resume", "-c"):
        assert any(flag in options for options in classify.values()), flag
        assert any(flag in options for options in detect.values()), flag


def test_config_file_then_command_line(tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 2\nbatch-size: 256\nlr: 0.05\nimg_size: 8\nprogress: false\nema: true\n")
    out = tmp_path / "run"
    assert main(["train", "-c", str(config), "--epochs", "1", "--out", str(out)]) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["epochs"] == 1  # the command line wins
    assert (settings["batch_size"], settings["lr"], settings["img_size"], settings["ema"]) == (256, 0.05, 8, True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and "raw_val_acc" in records[0]


def test_shipped_recipes_are_valid_and_share_their_base(tmp_path):
    from pathlib import Path

    from botnet.classification.train import TrainConfig
    from botnet.training.config import load_config_file

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"fashion_mnist_cpu.yaml", "fashion_mnist_cpu_resnet.yaml",
                                         "fashion_mnist_gpu.yaml"}
    loaded = {p.name: load_config_file(p, TrainConfig) for p in configs}
    for values in loaded.values():
        TrainConfig(**values).validate()
    botnet_recipe, twin = loaded["fashion_mnist_cpu.yaml"], loaded["fashion_mnist_cpu_resnet.yaml"]
    assert {k: v for k, v in twin.items() if k != "model"} == {k: v for k, v in botnet_recipe.items() if k != "model"}
    assert (botnet_recipe["model"], twin["model"]) == ("botnet_fmnist", "resnet_fmnist")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="loop"):
        load_config_file(tmp_path / "a.yaml", TrainConfig)


def test_a_diverging_run_stops_in_one_line_and_keeps_no_bad_epoch(tmp_path, capsys):
    # lr 1e12 blows the loss up within a step or two: the run stops before that step's update,
    # with one line naming epoch and step, and commits no checkpoint of the diverged epoch.
    out = tmp_path / "run"
    code = _run(["train", "--lr", "1e12", "--warmup-epochs", "0", "--epochs", "2", "--img-size", "8",
                 "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("botnet train: error: loss is not finite at epoch 1, step "), err
    assert not (out / "last.pt").exists() and not (out / "metrics.jsonl").exists()
