"""Ways in for bottleneck-transformer-pytorch and torchvision users: the same models as botnet's own."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import botnet
from botnet.compat import bottle_stack

# bottleneck-transformer-pytorch's README, with the stage where the paper puts it (c5).
BTP_KWARGS = dict(
    dim=1024, fmap_size=14, dim_out=2048, proj_factor=4, downsample=True, heads=4, dim_head=128,
    rel_pos_emb=True, activation=nn.ReLU(),
)  # fmt: skip


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def randomize_batch_norms(model: nn.Module) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so that each block shows in the output."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model


@torch.no_grad()
def test_btp_keywords_build_the_native_bottle_stack() -> None:
    ours = bottle_stack(**BTP_KWARGS).eval()
    native = botnet.BottleStack(1024, 512, depth=3, stride=2, heads=4, dim_head=128, ref_size=14)
    native = randomize_batch_norms(native).eval()
    assert type(ours) is botnet.BottleStack and shapes(ours) == shapes(native)
    ours.load_state_dict(native.state_dict())  # strict: same names and shapes
    x = torch.randn(1, 1024, 14, 14)
    assert torch.equal(ours(x), native(x))
    assert ours[0].attn.pos_emb == "relative" and ours[0].act.__class__ is nn.ReLU
    absolute = bottle_stack(**{**BTP_KWARGS, "rel_pos_emb": False, "activation": nn.SiLU})
    assert absolute[0].attn.pos_emb == "absolute" and isinstance(absolute[0].act, nn.SiLU)


@torch.no_grad()
def test_fmap_size_is_only_the_tables_reference_size() -> None:
    stack = bottle_stack(**{**BTP_KWARGS, "dim": 64, "dim_out": 128, "dim_head": 8}).eval()
    assert tuple(stack[0].attn.pos.rel_h.shape) == (2 * 14 - 1, 8)  # made for 14x14
    for height, width in ((14, 14), (9, 13), (20, 16), (7, 30)):
        out = stack(torch.randn(1, 64, height, width))
        assert out.shape == (1, 128, -(-height // 2), -(-width // 2)) and torch.isfinite(out).all()


def test_bad_btp_keywords_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="proj_factor must be 4.*got 2"):
        bottle_stack(**{**BTP_KWARGS, "proj_factor": 2})
    with pytest.raises(ValueError, match="activation must be nn.ReLU or nn.SiLU.*GELU"):
        bottle_stack(**{**BTP_KWARGS, "activation": nn.GELU()})


def test_only_the_shortcut_differs_from_btp_parameter_for_parameter() -> None:
    btp = pytest.importorskip("bottleneck_transformer_pytorch")
    for rel_pos_emb in (True, False):
        kwargs = {**BTP_KWARGS, "rel_pos_emb": rel_pos_emb}
        theirs, ours = btp.BottleStack(**kwargs), bottle_stack(**kwargs)
        # Theirs: a 3x3 stride-2 convolution in the downsampling shortcut; ours (the paper's): 1x1.
        assert count(theirs) - count(ours) == (9 - 1) * 1024 * 2048
        their_tables = sorted(tuple(p.shape) for n, p in theirs.named_parameters() if "pos_emb" in n)
        our_tables = sorted(tuple(p.shape) for n, p in ours.named_parameters() if ".pos." in n)
        assert their_tables == our_tables  # same position tables for fmap_size=14, 7, 7
    theirs = btp.BottleStack(**BTP_KWARGS).eval()
    with pytest.raises(AssertionError, match="must match the fmap_size"):
        theirs(torch.randn(1, 1024, 16, 16))  # theirs: exactly 14x14; ours: any size (test above)


def test_botnet50_from_torchvision_is_botnet50_with_the_resnets_c2_to_c4() -> None:
    resnet = randomize_batch_norms(torchvision.models.resnet50(num_classes=10)).eval()
    model = botnet.botnet50_from_torchvision(resnet)
    reference = botnet.create_model("botnet50", num_classes=10)
    assert isinstance(model, botnet.BoTNet) and model.name == "botnet50"
    assert shapes(model) == shapes(reference) and count(model) == count(reference)
    assert not model.training and model.fc.out_features == 10
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model.feature_maps(x)
        c2 = resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))
        c3 = resnet.layer2(c2)
        c4 = resnet.layer3(c3)
    for name, expected in (("c2", c2), ("c3", c3), ("c4", c4)):
        assert torch.equal(maps[name], expected), name
    assert maps["c5"].shape == (1, 2048, 2, 3)

    btp = pytest.importorskip("bottleneck_transformer_pytorch")
    # The hand-made btp version of the same network differs only by its 3x3 shortcut.
    by_hand = nn.Sequential(*list(resnet.children())[:7], btp.BottleStack(**BTP_KWARGS), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(1), nn.Linear(2048, 10))  # fmt: skip
    assert count(by_hand) - count(model) == (9 - 1) * 1024 * 2048


def test_botnet50_from_torchvision_refuses_other_resnets() -> None:
    for other in (torchvision.models.resnet18, torchvision.models.resnet101):
        with pytest.raises(ValueError, match="expected a torchvision resnet50"):
            botnet.botnet50_from_torchvision(other())
    model = botnet.botnet50_from_torchvision(torchvision.models.resnet50(), num_classes=0)
    assert model.training and isinstance(model.fc, nn.Identity)
