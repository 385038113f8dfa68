"""Attention recording (botnet.visualize) and the ``botnet attention`` command."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from botnet import MHSA2d, create_model
from botnet.checkpoint import save_model
from botnet.cli import main
from botnet.visualize import attention_layers, record_attention, select_attention_layers
from botnet.preprocess import resized_size
from botnet.visualize.images import load_image


def _tiny(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("botnet26", num_classes=5, **overrides).eval()  # two attention layers
    # At init the c5 features are small and attention is almost uniform;
    # larger projections make the weights far from uniform, so the checks bite.
    with torch.no_grad():
        for _, layer in attention_layers(model):
            for param in layer.parameters():
                param.mul_(8)
    return model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _tiny()


def test_weights_are_probability_distributions(model):
    x = torch.randn(2, 3, 24, 40)  # rectangular: 6x10 tokens, then 3x5 after the block's pooling
    with torch.no_grad(), record_attention(model) as records:
        model(x)
    assert list(records) == ["layer4.0.attn", "layer4.1.attn"]
    first = records["layer4.0.attn"]
    assert first.size == (6, 10) and records["layer4.1.attn"].size == (3, 5)
    for record in records.values():
        n = record.size[0] * record.size[1]
        assert record.weights.shape == (2, record.heads, n, n)
        assert record.weights.dtype == torch.float32
        assert (record.weights >= 0).all()
        torch.testing.assert_close(record.weights.sum(-1), torch.ones(2, record.heads, n), rtol=0, atol=1e-5)
        # weights are the softmax of the recorded split
        torch.testing.assert_close(
            (record.content_logits + record.position_logits).softmax(-1), record.weights, rtol=1e-5, atol=1e-6
        )
    assert first.weights.max() > 2 / (6 * 10), "logits should not be trivial in this test"


def test_recording_does_not_change_the_output(model):
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        expected = model(x)
        with record_attention(model) as records:
            recorded = model(x)
    assert records and torch.equal(recorded, expected)
    assert all(not layer._forward_hooks for _, layer in attention_layers(model)), "hooks must be removed"


def test_hooks_are_removed_after_an_exception(model):
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(model):
            raise RuntimeError("boom")
    assert all(not layer._forward_hooks for _, layer in attention_layers(model))


def test_recorded_weights_reproduce_the_layer_output(model):
    """Whatever attention path the layer takes, weights @ v is what it returned."""
    seen = {}
    layer = model.layer4[0].attn
    handle = layer.register_forward_hook(lambda mod, inputs, output: seen.update(x=inputs[0], out=output))
    try:
        with torch.no_grad(), record_attention(model, layers=0) as records:
            model(torch.randn(1, 3, 40, 24))
    finally:
        handle.remove()
    record = records["layer4.0.attn"]
    _, _, v = layer.project(seen["x"])
    out = (record.weights @ v).transpose(-2, -1).reshape(seen["out"].shape)
    torch.testing.assert_close(out, seen["out"], rtol=1e-4, atol=1e-5)


def _brute_force(layer: MHSA2d, x: torch.Tensor):
    """Logits by the formula, one (query, key) pair at a time; tables at their reference size."""
    _, _, height, width = x.shape
    q, k, _ = layer.project(x)
    heads, n = q.shape[1], height * width
    content = torch.zeros(heads, n, n, dtype=q.dtype)
    position = torch.zeros(heads, n, n, dtype=q.dtype)
    for i in range(n):
        yi, xi = divmod(i, width)
        for j in range(n):
            yj, xj = divmod(j, width)
            content[:, i, j] = (q[0, :, i] * k[0, :, j]).sum(-1)
            if layer.pos_emb == "relative":
                r = layer.pos.rel_h[yj - yi + height - 1] + layer.pos.rel_w[xj - xi + width - 1]
            else:
                r = layer.pos.abs_h[yj] + layer.pos.abs_w[xj]
            position[:, i, j] = (q[0, :, i] * r).sum(-1)
    return q, content, position


@pytest.mark.parametrize("pos_emb", ["relative", "absolute"])
def test_record_matches_the_formula(pos_emb):
    torch.manual_seed(1)
    height, width = 3, 5
    layer = MHSA2d(8, heads=2, dim_head=4, pos_emb=pos_emb, ref_size=(height, width)).double().eval()
    x = torch.randn(1, 8, height, width, dtype=torch.float64) * 2
    with torch.no_grad(), record_attention(layer) as records:
        layer(x)
        q, content, position = _brute_force(layer, x)
    record = records["MHSA2d"]
    assert record.weights.dtype == torch.float64  # a float64 model is recorded in float64
    torch.testing.assert_close(record.content_logits[0], content)
    torch.testing.assert_close(record.position_logits[0], position)
    torch.testing.assert_close(record.weights[0], (content + position).softmax(-1))
    # The position "table" picture is the position logit of the mean query.
    q_mean = q[0].mean(1)  # (heads, d)
    table = record.position_table_logits[0]
    if pos_emb == "relative":
        assert table.shape == (2, 2 * height - 1, 2 * width - 1)
        for dy in range(-(height - 1), height):
            for dx in range(-(width - 1), width):
                r = layer.pos.rel_h[dy + height - 1] + layer.pos.rel_w[dx + width - 1]
                torch.testing.assert_close(table[:, dy + height - 1, dx + width - 1], q_mean @ r)
    else:
        assert table.shape == (2, height, width)
        torch.testing.assert_close(table, position.mean(1).reshape(2, height, width))
    # query_map is row i of the weights laid out on the feature map
    torch.testing.assert_close(record.query_map(1, 3)[0].flatten(1), record.weights[0, :, 1 * width + 3])


def test_no_position_logits_and_autocast():
    model = create_model("botnet_tiny", num_classes=3, pos_emb="none").eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)
        with record_attention(model) as records:
            recorded = model(x)
    assert torch.equal(recorded, expected)
    (record,) = records.values()
    assert record.position_logits is None and record.position_table_logits is None
    assert record.weights.dtype == torch.float32
    torch.testing.assert_close(record.weights.sum(-1), torch.ones_like(record.weights[..., 0]), rtol=0, atol=1e-5)


def test_layer_selection(model):
    names = ["layer4.0.attn", "layer4.1.attn"]
    assert [name for _, name, _ in select_attention_layers(model)] == names
    assert [name for _, name, _ in select_attention_layers(model, [-1, "layer4.0"])] == names[::-1]
    assert select_attention_layers(model, "layer4.1.attn")[0][0] == 1
    with pytest.raises(ValueError, match="out of range.*0: 'layer4.0.attn', 1: 'layer4.1.attn'"):
        select_attention_layers(model, 2)
    with pytest.raises(ValueError, match="matches 2 attention layers; choose one of 0: 'layer4.0.attn'"):
        select_attention_layers(model, "layer4")
    with pytest.raises(ValueError, match="matches no attention layer"):
        select_attention_layers(model, "layer3.0")
    with pytest.raises(ValueError, match="has no attention"):
        select_attention_layers(create_model("resnet_tiny"))


def test_load_image_conversions(tmp_path):
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :4, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png")
    assert image.shape == (6, 8, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, 0], [1, 0, 0])
    np.testing.assert_allclose(image[0, -1], [1, 1, 1])  # composited onto white
    Image.fromarray(np.full((5, 7), 128, np.uint8)).save(tmp_path / "gray.png")
    np.testing.assert_allclose(load_image(tmp_path / "gray.png"), 128 / 255, atol=1e-6)
    assert load_image(tmp_path / "rgba.png", channels=1).shape == (6, 8, 1)
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "deep.png")
    # 16-bit is scaled by its range (1000 / 65535), like everywhere in the package: not by the
    # image's own maximum (which made this dark image white) and not clipped.
    np.testing.assert_allclose(load_image(tmp_path / "deep.png"), round(1000 / 257) / 255, atol=1e-6)
    assert resized_size(300, 451, 64) == (64, 96) and resized_size(451, 300, [64]) == (96, 64)
    assert resized_size(300, 451, [32, 40]) == (32, 40)
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .* as an image"):
        load_image(tmp_path / "text.png")


def _check_png(path, min_side: int = 200) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side


def test_cli_real_photo(tmp_path, capsys):
    data = pytest.importorskip("skimage.data")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    out = tmp_path / "maps.png"
    code = main(["attention", "--image", str(tmp_path / "cat.png"), "--model", "botnet_tiny", "--img-size", "48",
                 "--out", str(out)])
    assert code == 0
    _check_png(out)
    _check_png(tmp_path / "maps_positions.png")
    printed = capsys.readouterr().out
    assert "centre" in printed and "strongest feature" in printed


def test_cli_rectangular_rgba_photo_with_queries(tmp_path):
    data = pytest.importorskip("skimage.data")
    photo = np.concatenate([data.astronaut()[100:260], np.full((160, 512, 1), 200, np.uint8)], axis=-1)
    Image.fromarray(photo, "RGBA").save(tmp_path / "astronaut.png")  # 512 wide, 160 high
    out = tmp_path / "wide.png"
    code = main(["attention", "--image", str(tmp_path / "astronaut.png"), "--model", "botnet26", "--layer",
                 "layer4.1.attn", "--query", "10", "20", "--query", "500", "150", "--img-size", "40", "128",
                 "--smooth", "--out", str(out), "--positions-out", str(tmp_path / "pos.png")])
    assert code == 0
    _check_png(out)
    _check_png(tmp_path / "pos.png")


def test_cli_grayscale_image_and_one_channel_checkpoint(tmp_path, capsys):
    data = pytest.importorskip("skimage.data")
    Image.fromarray(data.camera()[::8, ::8]).save(tmp_path / "camera.png")  # 64x64, mode L
    torch.manual_seed(0)
    model = create_model("botnet_tiny", num_classes=3, in_chans=1, pos_emb="absolute")
    save_model(tmp_path / "gray.safetensors", model, img_size=[32, 32], mean=[0.5], std=[0.25],
               class_names=["a", "b", "c"])
    code = main(["attention", "--image", str(tmp_path / "camera.png"), "--checkpoint",
                 str(tmp_path / "gray.safetensors"), "--out", str(tmp_path / "gray.png")])
    assert code == 0
    _check_png(tmp_path / "gray.png")
    _check_png(tmp_path / "gray_positions.png")
    assert "8x8 tokens" in capsys.readouterr().out  # the checkpoint's 32x32 training size, stride 4
    # A colour model reads the same grayscale file as three equal channels.
    assert main(["attention", "--image", str(tmp_path / "camera.png"), "--model", "botnet_tiny",
                 "--out", str(tmp_path / "rgb.png")]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "{tmp}/missing.png"], "no image file at"),
        (["--image", "{tmp}/text.png"], "cannot read .* as an image"),
        (["--image", "{tmp}/small.png", "--query", "1"], "X Y pairs"),
        (["--image", "{tmp}/small.png", "--query", "40", "2"], r"outside the image, which is 40 px wide"),
        (["--image", "{tmp}/small.png", "--layer", "7"], "out of range"),
        (["--image", "{tmp}/small.png", "--img-size", "4"], "too small"),
        (["--image", "{tmp}/small.png", "--model", "resnet_tiny"], "has no attention layers"),
    ],
)
def test_cli_errors(tmp_path, capsys, args, message):
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "small.png")
    argv = ["attention", "--model", "botnet_tiny", "--out", str(tmp_path / "x.png")]
    argv += [a.format(tmp=tmp_path) for a in args]
    if "--model" in args:
        argv = argv[:1] + argv[3:]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("botnet attention: error:") and "Traceback" not in err
    assert re.search(message, err), err


def test_cli_list_layers(capsys):
    assert main(["attention", "--model", "botnet26", "--list-layers"]) == 0
    printed = capsys.readouterr().out
    assert "layer4.0.attn" in printed and "layer4.1.attn" in printed and "relative" in printed
