"""ResNet-50 weights (torchvision and timm layouts) give botnet50 the same c2-c4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import botnet
from botnet.models.weights import read_state_dict


def _randomise_batchnorm(model: nn.Module) -> None:
    # Default BN (weight 1, bias 0, mean 0, var 1) is the identity: random
    # values make a copied-or-not BN show in the outputs.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def _resnet_c2_c4(resnet: nn.Module, x: torch.Tensor, act: nn.Module) -> list[torch.Tensor]:
    y = resnet.maxpool(act(resnet.bn1(resnet.conv1(x))))
    maps = []
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3):
        y = layer(y)
        maps.append(y)
    return maps


def _assert_same_c2_c4(model: botnet.BoTNet, reference: list[torch.Tensor], x: torch.Tensor) -> None:
    with torch.no_grad():
        maps = model.feature_maps(x)
    for name, expected in zip(("c2", "c3", "c4"), reference):
        assert torch.equal(maps[name], expected), f"{name} differs"


@pytest.fixture(scope="module")
def torchvision_resnet50() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    _randomise_batchnorm(resnet)
    return resnet.eval()


def test_torchvision_resnet50_file_gives_identical_c2_c4(torchvision_resnet50, tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision_resnet50.state_dict(), path)
    model = botnet.create_model("botnet50", num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    report = botnet.load_resnet_weights(model, path)

    source = torchvision_resnet50.state_dict()
    expected_loaded = sorted(k for k in source if not k.startswith(("layer4.", "fc.")))
    assert report.loaded == expected_loaded
    # c5 is all BoT blocks in botnet50: none of its tensors is taken from the ResNet.
    # (its 3x3 convs have no counterpart at all: MHSA took their place).
    c5_reasons = {reason for key, reason in report.skipped.items() if key.startswith("layer4.")}
    assert c5_reasons == {"inside an attention (BoT) block", "not in model"}
    assert "layer4.0.conv2.weight" in report.skipped and "layer4.0.downsample.0.weight" in report.skipped
    assert report.skipped["fc.weight"].startswith("classifier")
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in report.missing)
    assert any(k.endswith("attn.pos.rel_h") for k in report.missing)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = _resnet_c2_c4(torchvision_resnet50, x, torchvision_resnet50.relu)
    _assert_same_c2_c4(model, reference, x)


def test_resnet50_loads_completely_into_botnet_resnet50(torchvision_resnet50, tmp_path):
    path = tmp_path / "resnet50.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in torchvision_resnet50.state_dict().items()}, str(path))
    model = botnet.create_model("resnet50").eval()
    report = botnet.load_resnet_weights(model, path, include_classifier=True)
    assert report.missing == [] and report.skipped == {}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), torchvision_resnet50(x))


def test_timm_resnet50_gives_identical_c2_c4():
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    resnet = timm.create_model("resnet50", pretrained=False)
    _randomise_batchnorm(resnet)
    resnet.eval()
    model = botnet.create_model("botnet50").eval()
    # A timm training checkpoint keeps the weights under "state_dict", next to other entries.
    report = botnet.load_resnet_weights(model, {"state_dict": resnet.state_dict(), "epoch": torch.tensor(3)})
    assert len(report.loaded) == sum(1 for k in resnet.state_dict() if not k.startswith(("layer4.", "fc.")))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = _resnet_c2_c4(resnet, x, resnet.act1)
    _assert_same_c2_c4(model, reference, x)


def test_ddp_prefix_and_wrapping_are_read(tmp_path):
    source = botnet.create_model("resnet_tiny").state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in source.items()}, "epoch": 1}, path)
    assert set(read_state_dict(path)) == set(source)
    model = botnet.create_model("botnet_tiny")
    report = botnet.load_resnet_weights(model, path)
    assert "conv1.weight" in report.loaded and torch.equal(model.conv1.weight, source["conv1.weight"])


def test_source_that_fits_nothing_is_an_error():
    model = botnet.create_model("botnet_tiny")
    with pytest.raises(ValueError, match="no tensor of the source fits the model"):
        botnet.load_resnet_weights(model, {"encoder.weight": torch.zeros(3)})


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": {}, "args": object()}, path)
    with pytest.raises(ValueError, match="not a plain tensor checkpoint|refuses pickled"):
        read_state_dict(path)
