"""botnet models in timm's registry (skipped without the [timm] extra)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import botnet
from botnet.models import timm_models
from botnet.checkpoint import save_model
from botnet.models import registry

timm = pytest.importorskip("timm")


def test_every_botnet_model_is_registered_without_taking_timms_names():
    assert set(timm_models.TIMM_NAMES) == set(botnet.list_models())
    for name, registered_as in timm_models.TIMM_NAMES.items():
        assert timm.is_model(registered_as)
        assert registered_as == (name if name.startswith("botnet") else f"botnet_{name}")
    assert set(timm.list_models(module="timm_models")) == set(timm_models.TIMM_NAMES.values())
    # timm's own models keep their names and code.
    assert type(timm.create_model("resnet26")).__module__ == "timm.models.resnet"
    assert timm.models.get_pretrained_cfg("botnet26t_256") is not None


def test_timm_builds_the_same_network_as_botnet():
    via_timm = timm.create_model("botnet_tiny", pretrained=False, num_classes=5, in_chans=1)
    direct = botnet.create_model("botnet_tiny", num_classes=5, in_chans=1).eval()
    assert isinstance(via_timm, botnet.BoTNet)
    direct.load_state_dict(via_timm.state_dict())  # strict: same parameter names and shapes
    x = torch.randn(2, 1, 32, 40)
    with torch.no_grad():
        assert torch.equal(via_timm.eval()(x), direct(x))


def test_pretrained_config_is_timm_style():
    model = timm.create_model("botnet50", num_classes=10)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["min_input_size"] == (3, 32, 32)
    assert cfg["pool_size"] == (7, 7) and not cfg["fixed_input_size"]
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    classifier = model.get_submodule(cfg["classifier"])
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 10
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 224, 224) and data_cfg["crop_pct"] == 0.875
    tiny_cfg = timm.models.get_pretrained_cfg("botnet_tiny")
    assert tiny_cfg.input_size == (3, 32, 32) and tiny_cfg.pool_size == (4, 4) and tiny_cfg.crop_pct == 1.0
    assert not tiny_cfg.has_weights
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3


def test_features_only_returns_c2_to_c5():
    features = timm.create_model("botnet_tiny", features_only=True).eval()
    model = botnet.create_model("botnet_tiny").eval()
    missing, unexpected = model.load_state_dict(features.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert features.feature_info.channels() == [info["num_chs"] for info in model.feature_info]
    assert features.feature_info.reduction() == [1, 2, 4, 8]
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        got = features(x)
        expected = list(model.feature_maps(x).values())
    assert len(got) == 4
    for a, b in zip(got, expected):
        assert torch.equal(a, b)

    picked = timm.create_model("botnet_tiny", features_only=True, out_indices=(2, 3), feature_cls="dict")
    picked.load_state_dict(features.state_dict(), strict=False)
    with torch.no_grad():
        out = picked.eval()(x)
    assert list(out) == ["2", "3"] and torch.equal(out["3"], expected[3])


def test_pretrained_true_fails_clearly():
    with pytest.raises(RuntimeError, match="no pretrained BoTNet weights.*load_resnet_weights"):
        timm.create_model("botnet_tiny", pretrained=True)


def test_checkpoint_path_loads_a_botnet_checkpoint(tmp_path):
    trained = botnet.create_model("botnet_tiny", num_classes=4).eval()
    path = tmp_path / "tiny.safetensors"
    save_model(path, trained, class_names=["a", "b", "c", "d"])
    loaded = timm.create_model("botnet_tiny", num_classes=4, checkpoint_path=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_a_name_timm_owns_is_skipped_with_a_warning():
    spec = registry.get_model_spec("botnet_tiny")
    botnet.register_model("botnet26t_256", spec)  # collides with timm's own model
    try:
        with pytest.warns(UserWarning, match="timm already has a model named 'botnet26t_256'"):
            timm_models.register_timm_models()
        assert "botnet26t_256" not in timm_models.TIMM_NAMES
        assert type(timm.create_model("botnet26t_256")).__module__ == "timm.models.byobnet"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            registry._MODEL_SPECS.pop("botnet26t_256")
            timm_models.register_timm_models()  # idempotent for the names already registered
    finally:
        registry._MODEL_SPECS.pop("botnet26t_256", None)


def test_import_botnet_does_not_import_timm_but_registers_once_it_is():
    code = (
        "import sys, botnet\n"
        "assert 'timm' not in sys.modules, 'import botnet imported timm'\n"
        "from timm import create_model, is_model\n"
        "assert is_model('botnet50') and is_model('botnet_resnet50')\n"
        "print(type(create_model('botnet_tiny', num_classes=3)).__name__)\n"
        "assert not any(type(f).__name__ == '_RegisterAfterTimmImport' for f in sys.meta_path)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "BoTNet"
    assert "not registered" not in result.stderr and "timm already has" not in result.stderr


def test_import_botnet_works_without_timm():
    code = (
        "import sys; sys.modules['timm'] = None\n"  # makes `import timm` fail, as when not installed
        "import botnet\n"
        "assert botnet.models.timm_models.TIMM_NAMES == {}\n"
        "print(botnet.create_model('botnet_tiny', num_classes=2)(__import__('torch').randn(1, 3, 32, 32)).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 2])" in result.stdout and "timm" not in result.stderr
