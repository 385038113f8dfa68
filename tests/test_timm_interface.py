"""timm's model interface on every registered model, in the style of timm's own model tests.

The interface itself needs no timm; the tests that go through timm's
registry and feature wrappers skip without it. Every model runs at twice its
minimum input size, not square (64x96 for the ResNet-50 family, 8x12 for the
mini models), with batch 1 where BatchNorm allows.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import botnet
from botnet.checkpoint import load_model, save_model
from botnet.layers import GLOBAL_POOL_TYPES

MODELS = botnet.list_models()
_CACHE: dict[str, botnet.BoTNet] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def model_for(name: str) -> botnet.BoTNet:
    """A fresh copy of ``name`` (7 classes, every residual branch live: no zero-init), in eval mode.

    Built once per name (the big S1 models take seconds to initialise);
    tests get deep copies, so they may change them.
    """
    if name not in _CACHE:
        _CACHE[name] = botnet.create_model(name, num_classes=7, zero_init_last=False).eval()
    return copy.deepcopy(_CACHE[name])


def image_for(model: botnet.BoTNet, batch: int = 1) -> torch.Tensor:
    stride = model.min_input_size
    return torch.randn(batch, model.in_chans, 2 * stride, 3 * stride)


def expected_shape(model: botnet.BoTNet, x: torch.Tensor, level: int) -> tuple[int, int, int, int]:
    info = model.feature_info[level]
    r = info["reduction"]
    return (x.shape[0], info["num_chs"], math.ceil(x.shape[2] / r), math.ceil(x.shape[3] / r))


def stages_by_hand(model: botnet.BoTNet, x: torch.Tensor) -> list[torch.Tensor]:
    """c2..c5 computed module by module, independently of forward_intermediates."""
    x = model.maxpool(model.act(model.bn1(model.conv1(x))))
    maps = []
    for index in range(4):
        x = getattr(model, f"layer{index + 1}")(x)
        maps.append(x)
    return maps


# -- forward, head, classifier reset (timm's test_model_default_cfgs) ----------------------------------


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_forward_head_and_reset_classifier(name: str) -> None:
    model = model_for(name)
    x = image_for(model)
    features = model.forward_features(x)
    assert features.shape == expected_shape(model, x, 3) and features.shape[1] == model.num_features
    logits = model(x)
    assert logits.shape == (1, 7) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(features), logits, rtol=0, atol=0)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (1, model.head_hidden_size) and model.head_hidden_size == model.num_features
    assert torch.equal(model.get_classifier()(pre_logits), logits)

    model.reset_classifier(0)  # pooled features
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    assert torch.equal(model.forward_head(features), pre_logits)
    model.reset_classifier(0, "")  # no pooling: the c5 map
    assert torch.equal(model.forward_head(features), features)
    model.reset_classifier(3, "avg")
    assert model.get_classifier().out_features == 3 and model.forward_head(features).shape == (1, 3)

    cfg = model.pretrained_cfg
    assert cfg["fixed_input_size"] is False and cfg["min_input_size"][1:] == (model.min_input_size,) * 2
    state = model.state_dict()
    assert model.get_classifier(name_only=True) == cfg["classifier"] == "fc"
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state


# -- forward_intermediates / prune_intermediate_layers / feature_info ----------------------------------


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_forward_intermediates_match_feature_info_and_pruning(name: str) -> None:
    model = model_for(name)
    x = image_for(model)
    final, intermediates = model.forward_intermediates(x)
    by_hand = stages_by_hand(model, x)
    assert len(intermediates) == len(model.feature_info) == 4
    for level, (got, expected) in enumerate(zip(intermediates, by_hand)):
        assert got.shape == expected_shape(model, x, level)
        assert torch.equal(got, expected)
    assert torch.equal(final, by_hand[-1])

    # timm's FeatureGetterNet: prune to the levels asked for, then take them.
    kept = model.prune_intermediate_layers([1, -2])
    assert kept == [1, 2]
    assert len(model.layer4) == 0 and isinstance(model.fc, nn.Identity)
    assert model.num_features == model.head_hidden_size == model.feature_info[2]["num_chs"]
    pruned = model.forward_intermediates(x, indices=kept, intermediates_only=True)
    assert len(pruned) == 2 and all(torch.equal(a, b) for a, b in zip(pruned, by_hand[1:3]))
    assert torch.equal(model(x), by_hand[2])  # no head left: forward gives the last kept map
    with pytest.raises(ValueError, match="c5 .*removed by prune_intermediate_layers"):
        model.forward_intermediates(x, indices=[3])


# -- gradient checkpointing --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_gives_identical_outputs_grads_and_bn_statistics(name: str) -> None:
    plain = model_for(name).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    x = image_for(plain, batch=2)
    outputs = []
    for model in (plain, checkpointed):
        out = model(x)
        out.square().sum().backward()
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    for (key, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), key
    # The rerun in backward must not fold the batch into the BN statistics a second time.
    for (key, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), key


def test_grad_checkpointing_actually_recomputes_blocks() -> None:
    model = model_for("botnet_tiny").train()
    calls: list[str] = []
    model.layer4[0].attn.register_forward_hook(lambda *_: calls.append("attn"))
    x = image_for(model, batch=2)
    model(x).sum().backward()
    assert calls == ["attn"]
    calls.clear()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    assert calls == ["attn", "attn"]  # forward, then again in backward
    calls.clear()
    with torch.no_grad():
        model(x)
    assert calls == ["attn"]  # nothing to checkpoint without autograd


# -- torch.fx: torchvision's create_feature_extractor ----------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_torchvision_feature_extractor_equals_feature_maps_at_two_sizes(name: str) -> None:
    model = model_for(name)
    nodes = {f"layer{i + 1}": stage for i, stage in enumerate(("c2", "c3", "c4", "c5"))}
    extractor = create_feature_extractor(model, return_nodes=nodes).eval()
    stride = model.min_input_size
    # The traced graph resizes the position tables for each input: two sizes, one of them odd.
    for size in ((2 * stride, 3 * stride), (3 * stride + 1, 2 * stride - 1)):
        x = torch.randn(1, 3, *size)
        got, expected = extractor(x), model.feature_maps(x)
        assert list(got) == list(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (size, key)
    with pytest.raises(ValueError, match="too small"):  # the input check is kept in the graph
        extractor(torch.randn(1, 3, stride - 1, stride))


# -- group_matcher ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_covers_stem_and_every_block(name: str) -> None:
    model = model_for(name)
    for coarse in (False, True):
        matcher = model.group_matcher(coarse=coarse)
        assert set(matcher) == {"stem", "blocks"}
        groups: set[tuple[str, ...]] = set()
        for key, _ in model.named_parameters():
            if re.match(matcher["stem"], key):
                groups.add(("stem",))
            elif match := re.match(matcher["blocks"], key):
                groups.add(match.groups())
            else:
                assert key.startswith("fc."), key  # the head: timm puts it in the last group
        depths = [len(stage) for stage in model.stages]
        assert len(groups) == 1 + (len(depths) if coarse else sum(depths))


# -- global pooling ----------------------------------------------------------------------------------


@torch.no_grad()
def test_global_pool_types() -> None:
    reference = botnet.create_model("botnet_tiny", num_classes=5).eval()
    x = torch.randn(2, 3, 24, 40)
    features = reference.forward_features(x)
    avg, peak = features.mean((2, 3)), features.amax((2, 3))
    expected = {"avg": avg, "max": peak, "avgmax": 0.5 * (avg + peak), "catavgmax": torch.cat([avg, peak], 1)}
    for pool, pooled in expected.items():
        model = botnet.create_model("botnet_tiny", num_classes=5, global_pool=pool).eval()
        assert model.global_pool.pool_type == pool
        assert model.head_hidden_size == model.num_features * (2 if pool == "catavgmax" else 1)
        assert model.fc.in_features == model.head_hidden_size  # catavgmax doubles the classifier's input
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), pooled)
        assert model.forward_head(features).shape == (2, 5)

    # No pooling with a classifier: per-position logits, whose mean is the "avg" model's logits.
    dense = botnet.create_model("botnet_tiny", num_classes=5, global_pool="").eval()
    dense.fc.load_state_dict(reference.fc.state_dict())
    per_position = dense.forward_head(features)
    assert per_position.shape == (2, 5, *features.shape[2:])
    torch.testing.assert_close(per_position.mean((2, 3)), reference.forward_head(features))
    assert torch.equal(dense.forward_head(features, pre_logits=True), features)
    unpooled = botnet.create_model("botnet_tiny", num_classes=0, global_pool="").eval()
    unpooled.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    assert torch.equal(unpooled(x), features)


def test_reset_classifier_changes_pooling_keeps_dtype_and_is_saved(tmp_path) -> None:
    model = botnet.create_model("botnet_tiny", num_classes=5).double().eval()
    model.reset_classifier(3, "catavgmax")
    assert model.fc.weight.dtype == torch.float64 and model.fc.in_features == 2 * model.num_features
    model.reset_classifier(4)  # global_pool=None keeps the pooling
    assert model.global_pool.pool_type == "catavgmax" and model.fc.in_features == 2 * model.num_features
    path = tmp_path / "tiny.safetensors"
    save_model(path, model.float())
    loaded, meta = load_model(path)
    assert loaded.global_pool.pool_type == "catavgmax" and meta["spec"]["global_pool"] == "catavgmax"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_bad_head_arguments_raise_value_errors() -> None:
    assert GLOBAL_POOL_TYPES == ("avg", "max", "avgmax", "catavgmax", "")
    with pytest.raises(ValueError, match=r"global_pool must be one of .*got 'mean'"):
        botnet.create_model("botnet_tiny", global_pool="mean")
    model = botnet.create_model("botnet_tiny")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(10, "fast")
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 0.*got -1"):
        model.reset_classifier(-1)


@torch.no_grad()
def test_forward_intermediates_indices_and_errors() -> None:
    model = model_for("botnet_tiny")
    x = image_for(model)
    final, every = model.forward_intermediates(x)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and all(torch.equal(a, b) for a, b in zip(last_two, every[2:]))
    stopped, picked = model.forward_intermediates(x, indices=[0, -3], stop_early=True)
    assert len(picked) == 2 and torch.equal(picked[1], every[1]) and torch.equal(stopped, every[1])
    not_stopped, _ = model.forward_intermediates(x, indices=[1])
    assert torch.equal(not_stopped, final)
    for bad, message in [
        (5, r"last 5 levels; expected 1 to 4"),
        (0, r"last 0 levels"),
        ([4], r"index 4 is out of range; expected an int in \[-4, 3\]"),
        ([-5], r"index -5 is out of range"),
        ([], r"indices is empty"),
        ([1.0], r"index 1.0 is out of range"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        model.forward_intermediates(x, output_fmt="NHWC")


# -- through timm's registry and feature wrappers (skipped without timm) ---------------------------------


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_timm_create_model_with_global_pool_and_no_classifier(name: str) -> None:
    timm = pytest.importorskip("timm")
    from botnet.models.timm_models import timm_name

    model = model_for(name)
    x = image_for(model)
    unpooled = timm.create_model(timm_name(name), num_classes=0, global_pool="").eval()
    unpooled.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    assert isinstance(unpooled, botnet.BoTNet) and unpooled.pretrained_cfg["fixed_input_size"] is False
    assert torch.equal(unpooled(x), stages_by_hand(model, x)[-1])


@torch.no_grad()
def test_timm_feature_classes_agree() -> None:
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 40, 24)
    outputs = {}
    for feature_cls in ("list", "dict", "hook", "getter", "fx"):
        torch.manual_seed(0)  # the same initial weights for every wrapper
        features = timm.create_model("botnet_tiny", features_only=True, feature_cls=feature_cls).eval()
        out = features(x)
        outputs[feature_cls] = list(out.values()) if isinstance(out, dict) else out
        assert features.feature_info.reduction() == [1, 2, 4, 8]
    for feature_cls, maps in outputs.items():
        assert len(maps) == 4 and all(torch.equal(a, b) for a, b in zip(maps, outputs["list"])), feature_cls

    # "getter" prunes what the indices asked for do not need: here c5 and the head.
    torch.manual_seed(0)
    getter = timm.create_model("botnet_tiny", features_only=True, feature_cls="getter", out_indices=(1, 2)).eval()
    info = model_for("botnet_tiny").feature_info
    assert getter.feature_info.channels() == [info[1]["num_chs"], info[2]["num_chs"]]
    assert getter.feature_info.reduction() == [info[1]["reduction"], info[2]["reduction"]]
    assert len(getter.model.layer4) == 0 and isinstance(getter.model.fc, nn.Identity)
    got = getter(x)
    assert len(got) == 2 and torch.equal(got[0], outputs["list"][1]) and torch.equal(got[1], outputs["list"][2])

    model = model_for("botnet_tiny")
    grouped = timm.models.group_parameters(model, model.group_matcher())
    assert len(grouped) == 1 + 4 + 1  # stem, one block per stage, head
