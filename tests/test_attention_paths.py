"""Every attention path computes the reference function, forward and backward."""

from __future__ import annotations

import pytest
import torch

from botnet.layers import MHSA2d, attention_math, attention_paths, set_attention_backend
from botnet.layers.attention_paths import (
    BACKENDS,
    attention_chunked,
    attention_flex,
    attention_sdpa,
    flex_available,
    full_bias,
    resolve_backend,
)
from botnet.models import create_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_flex = pytest.mark.skipif(not flex_available(), reason="this torch has no FlexAttention")

CPU_PATHS = {
    "chunked": attention_chunked,
    "chunked_3rows": lambda *a: attention_chunked(*a, chunk_size=3),
    "sdpa": attention_sdpa,
}


def _inputs(batch=2, heads=3, height=5, width=7, dim=8, dtype=torch.float32, device="cpu", bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = height * width

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype).requires_grad_()

    q, k, v = (randn(batch, heads, n, dim) for _ in range(3))
    if not bias:
        return [q, k, v, None, None]
    return [q, k, v, randn(batch, heads, n, height, scale=2.0), randn(batch, heads, n, width, scale=2.0)]


def _forward_backward(fn, inputs, grad_out):
    out = fn(*inputs)
    wanted = [t for t in inputs if t is not None]
    return out, torch.autograd.grad(out, wanted, grad_out)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_full_bias_is_row_plus_column_term():
    _, _, _, bias_h, bias_w = _inputs(batch=1, heads=1, height=3, width=4)
    bias = full_bias(bias_h, bias_w)
    width = 4
    for i in range(12):
        for j in range(12):
            assert bias[0, 0, i, j] == bias_h[0, 0, i, j // width] + bias_w[0, 0, i, j % width]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("path", list(CPU_PATHS))
def test_cpu_path_matches_reference_forward_and_backward(path, bias):
    inputs = _inputs(bias=bias)
    grad_out = torch.randn(inputs[2].shape, generator=torch.Generator().manual_seed(1))
    ref, ref_grads = _forward_backward(attention_math, inputs, grad_out)
    out, grads = _forward_backward(CPU_PATHS[path], inputs, grad_out)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert _rel_err(out, ref) < 1e-5
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) < 1e-5


def test_chunked_gradcheck_float64():
    inputs = [t.detach().double().requires_grad_() for t in _inputs(batch=1, heads=2, height=2, width=3, dim=4)]
    assert torch.autograd.gradcheck(lambda *a: attention_chunked(*a, chunk_size=4), inputs)


def test_chunked_keeps_v_dtype_like_reference():
    q, k, v, bias_h, bias_w = _inputs()
    v16 = v.detach().bfloat16().requires_grad_()
    out = attention_chunked(q, k, v16, bias_h, bias_w)
    ref = attention_math(q, k, v16, bias_h, bias_w)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert _rel_err(out, ref) < 1e-2
    out.float().sum().backward()
    assert v16.grad.dtype == torch.bfloat16


def test_chunked_does_not_keep_square_tensors():
    # Saved for backward: inputs and output only, nothing of size N^2.
    q, k, v, bias_h, bias_w = _inputs(height=12, width=12, dim=4)
    n = q.shape[2]
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        attention_chunked(q, k, v, bias_h, bias_w, chunk_size=16)
    assert sizes and max(sizes) < n * n
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        attention_math(q, k, v, bias_h, bias_w)
    assert max(sizes) >= q.shape[0] * q.shape[1] * n * n  # the reference does keep them


@needs_flex
@pytest.mark.filterwarnings("ignore:.*flex_attention.*")
def test_flex_score_mod_matches_reference_forward_cpu():
    # FlexAttention has no CPU backward; its unfused forward checks the score_mod.
    inputs = [None if t is None else t.detach() for t in _inputs()]
    out = attention_flex(*inputs, compiled=False)
    assert _rel_err(out, attention_math(*inputs)) < 1e-5


@pytest.mark.parametrize("pos_emb", ["relative", "absolute", "none"])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "flex"])
def test_mhsa_backends_agree_with_math(backend, pos_emb):
    torch.manual_seed(0)
    layer = MHSA2d(16, heads=2, dim_head=8, pos_emb=pos_emb, ref_size=4, backend="math")
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    grad_out = torch.randn(2, 16, 5, 6)
    ref = layer(x)
    ref_grads = torch.autograd.grad(ref, [x, *layer.parameters()], grad_out)
    layer.backend = backend
    out = layer(x)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], grad_out)
    assert _rel_err(out, ref) < 1e-5
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) < 1e-5


def test_mhsa_chunked_gradcheck_float64_through_layer(monkeypatch):
    # Through projection, position tables and several chunks (N = 12, chunks of 5 rows).
    monkeypatch.setattr(attention_paths, "CHUNK_ELEMENTS", 2 * 12 * 5)  # heads * N * rows
    torch.manual_seed(0)
    layer = MHSA2d(4, heads=2, dim_head=2, ref_size=3, backend="chunked").double()
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_mhsa_chunked_under_cpu_autocast_keeps_float32_logits():
    torch.manual_seed(0)
    layer = MHSA2d(16, heads=2, dim_head=8, ref_size=4)
    x = torch.randn(2, 16, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = layer(x)
        layer.backend = "chunked"
        out = layer(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert _rel_err(out, ref) < 1e-2


def test_auto_resolves_by_size_and_device():
    small = torch.zeros(1, 4, 196, 8)
    large = torch.zeros(2, 4, 4096, 8)
    assert resolve_backend("auto", small) == "math"
    assert resolve_backend("auto", large) == "chunked"
    assert resolve_backend("sdpa", small) == "sdpa"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", small)
    with pytest.raises(ValueError, match="backend must be one of"):
        MHSA2d(16, heads=2, dim_head=8, backend="fast")


def test_auto_is_the_traceable_reference_under_compile(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert resolve_backend("auto", torch.zeros(2, 4, 4096, 8)) == "math"


def test_set_attention_backend_reaches_every_layer():
    model = create_model("botnet_tiny", num_classes=3)
    assert set_attention_backend(model, "chunked") == 1
    assert all(m.backend == "chunked" for m in model.modules() if isinstance(m, MHSA2d))
    with pytest.raises(ValueError):
        set_attention_backend(model, "nope")


# --- CUDA: run on the GPU machine; skipped here -----------------------------


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["chunked", "sdpa", pytest.param("flex", marks=needs_flex)])
def test_cuda_paths_bf16_match_reference(backend):
    torch.manual_seed(0)
    layer = MHSA2d(64, heads=4, dim_head=32, ref_size=8, backend="math").cuda()
    x = torch.randn(2, 64, 16, 16, device="cuda", requires_grad=True)
    grad_out = torch.randn(2, 128, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = layer(x)
    ref_grads = torch.autograd.grad(ref, [x, *layer.parameters()], grad_out.to(ref.dtype))
    layer.backend = backend
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], grad_out.to(out.dtype))
    assert out.dtype == ref.dtype
    assert _rel_err(out, ref) < 1e-2
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) < 2e-2


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("path", ["chunked", "sdpa", pytest.param("flex", marks=needs_flex)])
def test_cuda_paths_float32_match_reference(path):
    fn = {"chunked": attention_chunked, "sdpa": attention_sdpa, "flex": attention_flex}[path]
    inputs = _inputs(height=8, width=16, dim=32, device="cuda")
    grad_out = torch.randn(inputs[2].shape, device="cuda")
    ref, ref_grads = _forward_backward(attention_math, inputs, grad_out)
    out, grads = _forward_backward(fn, inputs, grad_out)
    # TF32 may be on for matmuls in the fused kernels: 1e-3, not 1e-5.
    assert _rel_err(out, ref) < 1e-3
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) < 1e-3
