"""Starting runs from weights: --initial-checkpoint, --weights-backbone, --trainable-layers, --layer-decay (issue 25).

Models are tiny (botnet_mini / resnet_mini at 8-16 px); the command-line runs
train one epoch on the built-in digits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from botnet import create_model
from botnet.checkpoint import save_model
from botnet.cli import main
from botnet.layers.position import resize_table
from botnet.models.freeze import freeze_stages
from botnet.models.transfer import (
    adapt_input_conv,
    load_backbone_weights,
    load_initial_checkpoint,
    read_weights_source,
)
from botnet.runtime.store import load_checkpoint
from botnet.training.optim import create_optimizer, stage_ids

TABLES = ("rel_h", "rel_w", "abs_h", "abs_w")


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every tensor (BN statistics included) random, so that a tensor left at its initial value cannot pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    return model


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory) -> Path:
    """A botnet_mini classifier for 5 classes, 3 channels, position tables for 16 px, saved as safetensors."""
    path = tmp_path_factory.mktemp("ckpt") / "rgb.safetensors"
    save_model(path, _randomised(create_model("botnet_mini", num_classes=5, ref_img_size=16)))
    return path


# --------------------------------------------------------------------------- loading rules


def test_initial_checkpoint_loads_every_fitting_tensor_and_reinitialises_another_head(rgb_checkpoint):
    source = read_weights_source(rgb_checkpoint)
    model = create_model("botnet_mini", num_classes=10, in_chans=1, ref_img_size=16)
    fresh_head = model.fc.weight.detach().clone()
    report = load_initial_checkpoint(model, source)
    state = model.state_dict()
    for key, value in source.state.items():
        if key.startswith("fc."):
            assert "classifier for 5 classes, this model has 10: re-initialised" == report.skipped[key]
        elif key == "conv1.weight":  # RGB filters for a grey model: summed over the colours
            assert torch.equal(state[key], value.sum(dim=1, keepdim=True))
            assert "3 -> 1 input channels (summed" in report.adapted[key]
        else:
            assert torch.equal(state[key], value), key
    assert torch.equal(model.fc.weight, fresh_head) and report.missing == ["fc.bias", "fc.weight"]
    assert report.partial and "(partial match)" in report.summary()
    assert report.to_dict()["source"] == str(rgb_checkpoint)


def test_position_tables_are_interpolated_as_at_run_time(rgb_checkpoint):
    source = read_weights_source(rgb_checkpoint)
    model = create_model("botnet_mini", num_classes=0, ref_img_size=40)  # other table lengths
    report = load_backbone_weights(model, source)
    tables = [key for key in source.state if key.rsplit(".", 1)[-1] in TABLES]
    assert tables and sorted(report.resized) == sorted(tables)
    for key in tables:
        wanted = model.state_dict()[key]
        assert wanted.shape != source.state[key].shape
        assert torch.equal(wanted, resize_table(source.state[key], wanted.shape[0]))
    # What the model computes at the checkpoint's size: the interpolated tables, resized back by the
    # model itself at run time, give the checkpoint's relative positions exactly at the zero offset.
    centre = source.state[tables[0]].shape[0] // 2
    assert torch.allclose(model.state_dict()[tables[0]][model.state_dict()[tables[0]].shape[0] // 2],
                          source.state[tables[0]][centre])


def test_adapt_input_conv_follows_timm():
    weight = torch.randn(8, 3, 3, 3)
    grey = adapt_input_conv(1, weight)
    image = torch.rand(1, 1, 6, 6)
    # A grey image seen by the RGB filters (R = G = B) gives the summed filter's response.
    assert torch.allclose(torch.conv2d(image.expand(1, 3, 6, 6), weight), torch.conv2d(image, grey), atol=1e-5)
    to_rgb = adapt_input_conv(3, grey)
    assert torch.allclose(torch.conv2d(image.expand(1, 3, 6, 6), to_rgb), torch.conv2d(image, grey), atol=1e-5)
    assert adapt_input_conv(2, torch.randn(8, 4, 3, 3)) is None  # no rule: the tensor is skipped
    timm = pytest.importorskip("timm")
    for chans in (1, 5):  # the cases timm's own function covers
        assert torch.allclose(adapt_input_conv(chans, weight), timm.models.adapt_input_conv(chans, weight.clone()))


def test_backbone_from_a_resnet_state_dict_leaves_bot_blocks_and_head(tmp_path):
    resnet = _randomised(create_model("resnet_mini", num_classes=7))
    path = tmp_path / "resnet.pth"
    torch.save(resnet.state_dict(), path)
    model = create_model("botnet_mini", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_backbone_weights(model, read_weights_source(path))
    assert report.kind == "state dict"
    for key, value in model.state_dict().items():
        inside_bot = key.startswith("layer4.") and ".attn." in key or key.startswith("fc.")
        if key in report.loaded:
            assert torch.equal(value, resnet.state_dict()[key]) and not key.startswith("fc.")
        else:
            assert torch.equal(value, before[key]), key
        if ".attn." in key:
            assert inside_bot and key not in report.loaded
    assert report.skipped["fc.weight"].startswith("classifier")


def test_detection_backbone_from_a_botnet_checkpoint_equals_it(tmp_path):
    from botnet.detection import botnet_fpn_backbone

    classifier = _randomised(create_model("botnet_mini", num_classes=10))
    run = tmp_path / "run"
    run.mkdir()
    save_model(run / "best.safetensors", classifier)  # a run directory, as `botnet train` leaves it
    same = botnet_fpn_backbone("botnet_mini", weights=run)
    state = same.body.state_dict()
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
    assert set(state) <= set(expected)
    assert all(key.endswith("num_batches_tracked") for key in set(expected) - set(state))  # FrozenBN has none
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key
    assert any(key.endswith("attn.pos.rel_h") for key in state) and same.load_report.kind == "botnet"
    # At another detection size the tables are interpolated from the classification size; the rest is equal.
    larger = botnet_fpn_backbone("botnet_mini", weights=run, ref_img_size=64)
    resized = larger.load_report.resized
    assert resized and all(key.rsplit(".", 1)[-1] in TABLES for key in resized)
    for key, value in larger.body.state_dict().items():
        if key in resized:
            assert torch.equal(value, resize_table(expected[key], value.shape[0]))
        else:
            assert torch.equal(value, expected[key]), key


# --------------------------------------------------------------------------- freezing and layer decay


def test_layer_decay_scales_every_stage_and_skips_frozen_ones():
    model = create_model("botnet_mini", num_classes=10)
    freeze_stages(model, 3)
    optimizer = create_optimizer(model, "sgd", 0.1, 5e-4, 0.9, layer_decay=0.5)
    ids, top = stage_ids(model)
    assert top == 5 and ids["conv1.weight"] == 0 and ids["layer3.0.conv1.weight"] == 3 and ids["fc.weight"] == 5
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            seen.add(name)
            assert group["lr"] == pytest.approx(0.1 * 0.5 ** (5 - ids[name]))
            assert group["weight_decay"] == (0.0 if param.ndim <= 1 or ".pos." in name else 5e-4)
    assert seen == {n for n, p in model.named_parameters() if not n.startswith(("conv1", "bn1", "layer1"))}
    # In a detector the backbone is found inside (backbone.body) and the heads train at the full rate.
    from botnet.detection import maskrcnn_botnet_fpn

    detector = maskrcnn_botnet_fpn("botnet_tiny", num_classes=3, returned_layers=(2, 3, 4), fpn_channels=16)
    ids, top = stage_ids(detector)
    assert ids["backbone.body.layer2.0.conv1.weight"] == 2 and ids["backbone.fpn.inner_blocks.0.0.weight"] == top


def test_frozen_stages_keep_their_weights_and_statistics_in_training():
    model = create_model("botnet_mini", num_classes=10, in_chans=1)
    assert freeze_stages(model, 2, eval_mode=True) == ["layer2", "layer1", "conv1", "bn1"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = create_optimizer(model, "sgd", 0.5)
    model.train()
    assert not model.layer2.training and not model.bn1.training and model.layer3.training
    loss = model(torch.randn(4, 1, 16, 16)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        frozen = key.startswith(("conv1.", "bn1.", "layer1.", "layer2."))
        assert torch.equal(after[key], value) == frozen or key.endswith("num_batches_tracked"), key


# --------------------------------------------------------------------------- command line


def _settings(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


COMMON = ["--img-size", "8", "-b", "128", "--no-progress", "--sched", "constant", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *COMMON]) == 0
    return out


def test_train_from_a_run_with_freezing_and_layer_decay(pretrained_run, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["train", "--epochs", "1", "--out", str(out), "--initial-checkpoint", str(pretrained_run),
                 "--trainable-layers", "2", "--layer-decay", "0.5", *COMMON]) == 0
    printed = capsys.readouterr().out
    assert f"--initial-checkpoint {pretrained_run / 'best.safetensors'}: loaded 106 tensors, skipped 0" in printed
    start = _settings(out)["initial_weights"]
    assert start["option"] == "--initial-checkpoint" and start["missing"] == [] and len(start["loaded"]) == 106
    source = read_weights_source(pretrained_run / "best.safetensors").state
    trained = load_checkpoint(out / "last.pt")["model"]
    for key, value in trained.items():  # the frozen stages (BN statistics too) are the checkpoint's
        frozen = key.startswith(("conv1.", "bn1.", "layer1.", "layer2."))
        if frozen:
            assert torch.equal(value, source[key]), key
    assert not torch.equal(trained["layer3.0.conv1.weight"], source["layer3.0.conv1.weight"])
    assert not torch.equal(trained["fc.weight"], source["fc.weight"])


def test_resume_restores_exactly_and_does_not_reload_the_weights(pretrained_run, tmp_path):
    source = tmp_path / "start.safetensors"
    shutil.copy(pretrained_run / "last.safetensors", source)
    args = ["--weights-backbone", str(source), "--trainable-layers", "3", "--layer-decay", "0.7", *COMMON]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", "--epochs", "2", "--out", str(whole), *args]) == 0
    assert main(["train", "--epochs", "1", "--out", str(parts), *args]) == 0
    source.unlink()  # a resume that read the weights again would fail here
    assert main(["train", "--resume", str(parts), "--epochs", "2"]) == 0
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(parts / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    keys = ("epoch", "train_loss", "val_loss", "val_acc", "lr")
    assert [{k: r[k] for k in keys} for r in a["history"]] == [{k: r[k] for k in keys} for r in b["history"]]
    assert _settings(parts)["initial_weights"] == _settings(whole)["initial_weights"]  # still said after resume
    assert _settings(parts)["initial_weights"]["skipped"]["fc.weight"].startswith("classifier")


@pytest.mark.parametrize("case", ["foreign", "damaged", "unsafe", "trainable", "decay0", "decay2", "both"])
def test_bad_starts_are_one_line_and_leave_no_run_directory(case, pretrained_run, tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    flags = ["--weights-backbone", str(weights)]
    expected = str(weights)
    if case == "foreign":
        torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, weights)
        expected = "no tensor of the source fits the model"
    elif case == "damaged":
        weights.write_bytes(b"PK\x03\x04 not really a torch file")
        expected = "is damaged or not a checkpoint file"
    elif case == "unsafe":
        torch.save({"state_dict": {}, "args": __import__("argparse").Namespace(lr=1)}, weights)
        expected = "refusing to load"
    elif case == "trainable":
        flags, expected = ["--trainable-layers", "6"], "--trainable-layers"
    elif case == "decay0":
        flags, expected = ["--layer-decay", "0"], "--layer-decay"
    elif case == "decay2":
        flags, expected = ["--layer-decay", "1.5"], "--layer-decay"
    else:
        flags, expected = ["--weights-backbone", str(pretrained_run), "--initial-checkpoint", str(pretrained_run)], "give one"
    out = tmp_path / "run"
    with pytest.raises(SystemExit) if case in ("trainable", "decay0", "decay2") else _nothing() as raised:
        code = main(["train", "--epochs", "1", "--out", str(out), *flags, *COMMON])
    code = raised.value.code if raised is not None else code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    if case in ("foreign", "damaged", "unsafe"):
        assert str(weights) in err
    assert not out.exists()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_detect_train_from_a_classification_run(pretrained_run, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    data, out = tmp_path / "data", tmp_path / "det"
    assert main(["detect", "make-synthetic", str(data), "--train", "2", "--val", "1", "--min-size", "48",
                 "--max-size", "64"]) == 0
    model = ["--backbone", "botnet_mini", "--returned-layers", "3", "4", "--fpn-channels", "16", "--box-head-size",
             "32", "--mask-head-channels", "8", "--box-batch-size", "32", "--rpn-post-nms-train", "50",
             "--min-size", "48", "--max-size", "64", "-b", "2", "--val-split", "none", "--no-progress"]
    assert main(["detect", "train", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--weights-backbone", str(pretrained_run), *model]) == 0
    start = _settings(out)["initial_weights"]
    assert start["kind"] == "botnet" and start["option"] == "--weights-backbone"
    assert any(key.endswith("attn.pos.rel_h") for key in start["loaded"])  # the BoT blocks came too
    assert "conv1.weight" in start["adapted"]  # grey digits -> RGB detection
    assert "backbone weights from" in capsys.readouterr().out
    # Another architecture is refused before the synthetic data are written: no run directory.
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    bad = tmp_path / "bad"
    assert main(["detect", "train", "--out", str(bad), "--weights-backbone", str(foreign), *model]) == 2
    assert "no tensor of the source fits" in capsys.readouterr().err and not bad.exists()


def test_train_fraction_is_stratified_and_fixed_by_the_seed():
    from botnet.classification.data import InMemoryImages
    from botnet.classification.subset import train_subset

    labels = torch.arange(100) % 4  # 25 per class
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2).contiguous()
    dataset = InMemoryImages(images, labels)
    part = train_subset(dataset, 0.2, seed=3)
    assert isinstance(part, InMemoryImages) and torch.bincount(part.labels).tolist() == [5, 5, 5, 5]
    assert torch.equal(part.labels, labels[part.images[:, 0, 0, 0].long()])  # images keep their labels
    assert torch.equal(train_subset(dataset, 0.2, seed=3).images, part.images)
    assert not torch.equal(train_subset(dataset, 0.2, seed=4).images, part.images)
    assert train_subset(dataset, 1.0, seed=3) is dataset


def test_a_checkpoint_of_another_model_is_a_partial_match_that_says_so(rgb_checkpoint):
    model = create_model("botnet_fmnist", num_classes=5)  # same stage layout, other widths in places
    report = load_initial_checkpoint(model, read_weights_source(rgb_checkpoint))
    assert report.partial and report.loaded and report.missing
    assert "the checkpoint holds a botnet_mini, this model is a botnet_fmnist" in report.summary()
    assert all(why.startswith(("shape", "not in model", "classifier")) for why in report.skipped.values())


def test_train_from_a_resnet_file(tmp_path, capsys):
    resnet = tmp_path / "resnet.pth"
    torch.save({"state_dict": _randomised(create_model("resnet_mini", num_classes=1000)).state_dict()}, resnet)
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--weights-backbone", str(resnet), *COMMON]) == 0
    start = _settings(out)["initial_weights"]
    assert start["kind"] == "state dict" and start["partial"]
    assert "summed" in start["adapted"]["conv1.weight"]  # RGB weights, grey digits
    assert not any(".attn." in key for key in start["loaded"]) and "fc.weight" not in start["loaded"]
    assert "layer3.0.conv2.weight" in start["loaded"] and "(partial match)" in capsys.readouterr().out
