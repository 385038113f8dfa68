"""Model family: parameter counts against the paper, every model runs, any size."""

from __future__ import annotations

import pytest
import torch
import torchvision

import botnet
from botnet.checkpoint import load_model, save_model
from botnet.layers import BoTBlock, MHSA2d
from botnet.models.summary import summarize

PAPER_PARAMS_S1 = {  # REFERENCE.md, ImageNet head
    "botnet_s1_59": 33.5e6,
    "botnet_s1_77": 53.9e6,
    "botnet_s1_110": 54.7e6,
    "botnet_s1_128": 75.1e6,
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet50_is_torchvision_resnet50() -> None:
    ours = botnet.create_model("resnet50").eval()
    reference = torchvision.models.resnet50().eval()
    assert count(ours) == count(reference) == 25_557_032
    ours.load_state_dict(reference.state_dict())  # strict: same names and shapes
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_botnet50_parameter_count() -> None:
    assert abs(count(botnet.create_model("botnet50")) - 20.8e6) / 20.8e6 < 0.005


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_S1))
def test_s1_parameter_counts(name: str) -> None:
    assert abs(count(botnet.create_model(name)) - PAPER_PARAMS_S1[name]) / PAPER_PARAMS_S1[name] < 0.03


def test_bottlestack_on_torchvision_resnet50_equals_botnet50() -> None:
    # Two code paths to the paper's BoT50: swap torchvision's layer4, or build from the spec.
    resnet = torchvision.models.resnet50()
    resnet.layer4 = botnet.BottleStack(1024, 512, depth=3, stride=2, ref_size=14)
    assert count(resnet) == count(botnet.create_model("botnet50"))
    assert resnet(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_bot_block_pools_after_attention_with_1x1_shortcut() -> None:
    block = BoTBlock(32, 16, stride=2, heads=2, ref_size=6)
    seen = []
    block.attn.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    out = block(torch.randn(2, 32, 6, 7))
    assert seen == [(6, 7)]  # attention at the input resolution, before pooling
    assert out.shape == (2, 64, 3, 4)  # ceil: the pool matches the stride-2 1x1 shortcut on odd sizes
    shortcut_conv = block.downsample[0]
    assert shortcut_conv.kernel_size == (1, 1) and shortcut_conv.stride == (2, 2)


def test_zero_init_last_bn_makes_blocks_start_as_shortcuts() -> None:
    model = botnet.create_model("botnet_tiny", num_classes=10).eval()
    for block in model.layer4:
        assert torch.count_nonzero(block.bn3.weight) == 0
    block = model.layer4[0]
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))


@pytest.mark.parametrize("name", botnet.list_models())
def test_every_model_forward_backward_any_size(name: str) -> None:
    model = botnet.create_model(name, num_classes=7)
    small = model.min_input_size * 2
    x = torch.randn(2, 3, small, small)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        rect = model(torch.randn(1, 3, small + model.min_input_size, small * 2 - 3))
    assert rect.shape == (1, 7) and torch.isfinite(rect).all()


def test_feature_maps_shapes_and_consistency() -> None:
    model = botnet.create_model("botnet50", num_classes=0).eval()
    x = torch.randn(1, 3, 100, 77)
    with torch.no_grad():
        maps = model.feature_maps(x)
        features = model.forward_features(x)
    assert list(maps) == ["c2", "c3", "c4", "c5"]
    assert [tuple(m.shape[1:]) for m in maps.values()] == [(256, 25, 20), (512, 13, 10), (1024, 7, 5), (2048, 4, 3)]
    assert [info["num_chs"] for info in model.feature_info] == [256, 512, 1024, 2048]
    torch.testing.assert_close(maps["c5"], features)
    assert model(x).shape == (1, 2048)  # num_classes=0: pooled features


def test_saved_at_224_runs_at_320x192(tmp_path) -> None:
    model = botnet.create_model("botnet50", num_classes=5).eval()
    path = tmp_path / "botnet50.safetensors"
    save_model(path, model, img_size=[224, 224])
    loaded, meta = load_model(path)
    assert meta["model"] == "botnet50"
    # Tables stay at the reference size in the file; other sizes interpolate them.
    tables = {n: tuple(p.shape) for n, p in loaded.named_parameters() if n.endswith(("rel_h", "rel_w"))}
    assert tables["layer4.0.attn.pos.rel_h"] == (27, 128) and tables["layer4.1.attn.pos.rel_h"] == (13, 128)
    x = torch.randn(1, 3, 320, 192)
    with torch.no_grad():
        out = loaded(x)
        torch.testing.assert_close(out, model(x))
    assert out.shape == (1, 5)


def test_position_variants_and_overrides() -> None:
    for pos_emb in ("relative", "absolute", "none"):
        model = botnet.create_model("botnet_tiny", num_classes=3, pos_emb=pos_emb, heads=2)
        layers = [m for m in model.modules() if isinstance(m, MHSA2d)]
        assert layers and all(m.pos_emb == pos_emb and m.heads == 2 for m in layers)
        assert model(torch.randn(1, 3, 24, 40)).shape == (1, 3)
    assert botnet.create_model("botnet_tiny", in_chans=1)(torch.randn(1, 1, 28, 28)).shape == (1, 1000)


def test_compile_matches_eager() -> None:
    model = botnet.create_model("botnet_tiny", num_classes=5).eval()
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_bad_input_errors() -> None:
    model = botnet.create_model("botnet50", num_classes=10)
    with pytest.raises(ValueError, match="must have 3 channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32 px"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"4D tensor \(B, C, H, W\).*unsqueeze"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="did you mean botnet50"):
        botnet.create_model("botnet5O")
    with pytest.raises(ValueError, match="unknown model option"):
        botnet.create_model("botnet50", fmap_size=14)
    with pytest.raises(ValueError, match="no pretrained"):
        botnet.create_model("botnet50", pretrained=True)


def test_load_resnet_weights_fills_conv_stages() -> None:
    resnet = torchvision.models.resnet50().eval()
    model = botnet.create_model("botnet50").eval()
    report = botnet.load_resnet_weights(model, resnet.state_dict())
    assert "layer3.5.conv2.weight" in report.loaded and "conv1.weight" in report.loaded
    assert report.skipped["layer4.0.conv2.weight"].startswith("not in model")
    assert report.skipped["fc.weight"].startswith("classifier")
    assert "layer4.0.attn.qkv.weight" in report.missing
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.feature_maps(x)["c4"]
        reference = resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))))
    torch.testing.assert_close(ours, reference)


def test_summary_matches_published_resnet50_flops() -> None:
    rows = summarize(botnet.create_model("resnet50"), (224, 224))
    total_macs = sum(r.flops for r in rows) / 2
    assert abs(total_macs - 4.09e9) / 4.09e9 < 0.01  # torchvision's published 4.09 GFLOPs (MACs)
    assert sum(r.params for r in rows) == 25_557_032
    bot_rows = summarize(botnet.create_model("botnet50"), (224, 224))
    assert bot_rows[4].attention_positions == [196, 49, 49]  # c5: 14x14 before the pool, then 7x7
