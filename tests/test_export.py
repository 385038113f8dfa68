"""Exported models (ONNX, torch.export, TorchScript) match PyTorch at sizes other than the export size."""

from __future__ import annotations

import json

import pytest
import torch

import botnet
from botnet.checkpoint import save_model
from botnet.cli import main
from botnet.export import export_model, load_exported
from botnet.layers.position import resize_table

EXPORT_SIZE = (32, 32)  # botnet_tiny's reference size: the size where a baked-in table would still look right
OTHER_SIZES = [(2, 40, 48), (3, 17, 29)]  # (batch, H, W): neither is the export size; one is odd and not square


@pytest.fixture(scope="module")
def tiny() -> botnet.BoTNet:
    torch.manual_seed(0)
    model = botnet.create_model("botnet_tiny", num_classes=5)
    # Non-trivial BN statistics and last-BN gammas so every branch shows in the logits.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _assert_matches(run, model, sizes=OTHER_SIZES, atol=1e-4):
    for batch, height, width in sizes:
        x = torch.randn(batch, model.in_chans, height, width)
        with torch.no_grad():
            expected = model(x)
            got = run(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=atol)


def test_position_tables_at_the_reference_size_are_the_parameters_exactly(tiny):
    # tables() interpolates unconditionally (so export records no size test);
    # at the reference length that must be the identity, bit for bit.
    pos = tiny.layer4[0].attn.pos
    rel_h, rel_w = pos.tables(*pos.ref_size)
    assert torch.equal(rel_h, pos.rel_h) and torch.equal(rel_w, pos.rel_w)
    table = torch.randn(27, 16)
    assert torch.equal(resize_table(table, 27), table)


def test_onnx_matches_pytorch_at_other_sizes(tiny, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    import onnx

    path = export_model(tiny, tmp_path / "tiny.onnx", "onnx", img_size=EXPORT_SIZE,
                        meta=botnet.checkpoint.model_meta(tiny, class_names=list("abcde")))
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape) == ("images", ["batch", 3, "height", "width"])
    assert (out.name, out.shape) == ("logits", ["batch", 5])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["botnet"])
    assert meta["model"] == "botnet_tiny" and meta["class_names"] == list("abcde")

    def run(x):
        return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])

    _assert_matches(run, tiny)
    assert load_exported(path, "onnx")  # the loader the CLI uses opens it too


def test_torch_export_program_matches_pytorch_at_other_sizes(tiny, tmp_path):
    path = export_model(tiny, tmp_path / "tiny.pt2", "exported", img_size=EXPORT_SIZE)
    run = load_exported(path, "exported")
    _assert_matches(run, tiny, atol=1e-5)
    # The smallest size it takes is the network's stride + 1 (see botnet.export).
    _assert_matches(run, tiny, sizes=[(1, 9, 9)], atol=1e-5)


def test_traced_torchscript_runs_at_other_sizes_but_skips_input_checks(tiny, tmp_path):
    path = export_model(tiny, tmp_path / "tiny.pt", "torchscript", img_size=EXPORT_SIZE)
    run = load_exported(path, "torchscript")
    _assert_matches(run, tiny, atol=1e-5)
    # What tracing fixes: the Python-side input check. Eager botnet names the problem...
    with pytest.raises(ValueError, match="must have 3 channels"):
        tiny(torch.randn(1, 1, 32, 32))
    # ...the traced model fails inside the convolution instead.
    with pytest.raises(RuntimeError):
        run(torch.randn(1, 1, 32, 32))


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")
def test_export_command_from_a_checkpoint(tiny, tmp_path, capsys):
    ckpt = tmp_path / "run" / "best.safetensors"
    save_model(ckpt, tiny, class_names=list("abcde"), img_size=[32, 32])
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(ckpt.parent), "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torchscript vs PyTorch" in printed and "3 x 3 x 40 x 40" in printed
    files = {"botnet.json": ""}
    torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["botnet.json"])["class_names"] == list("abcde")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "onnx", "--out", "x.onnx"], "give --model NAME"),
        (["--model", "botnet_nope", "--format", "onnx", "--out", "x.onnx"], "unknown model 'botnet_nope'"),
        (["--checkpoint", "missing.safetensors", "--format", "onnx", "--out", "x.onnx"], "no weights file"),
        (["--model", "botnet_tiny", "--format", "onnx", "--opset", "13", "--out", "x.onnx"], "opset must be >= 17"),
    ],
)
def test_export_command_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("botnet export: error:") and message in err
