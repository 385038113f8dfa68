"""Every attention path computes the reference function, forward and backward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from botnet.layers import MHSA2d, attention_math, attention_paths, set_attention_backend
from botnet.layers.attention_paths import (
    BACKENDS,
    attention_chunked,
    attention_flex,
    attention_fold,
    attention_sdpa,
    auto_backend,
    flex_available,
    fold_key_columns,
    fold_widths,
    full_bias,
    resolve_backend,
)
from botnet.models import create_model

SRC = Path(__file__).resolve().parent.parent / "src"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_flex = pytest.mark.skipif(not flex_available(), reason="this torch has no FlexAttention")

CPU_PATHS = {
    "chunked": attention_chunked,
    "chunked_3rows": lambda *a: attention_chunked(*a, chunk_size=3),
    "sdpa": attention_sdpa,
    "fold": attention_fold,
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


# --- fold: position logits folded into q and k, SDPA without a mask ---------


def test_fold_key_columns_turn_a_dot_product_into_the_bias():
    # [bias_h[i], bias_w[i]] . columns[j] == bias_h[i, y_j] + bias_w[i, x_j] for every pair.
    _, _, _, bias_h, bias_w = _inputs(height=4, width=6, dtype=torch.float64)
    columns = fold_key_columns(4, 6, pad=3, dtype=torch.float64, device="cpu")
    assert columns.shape == (24, 4 + 6 + 3) and (columns[:, 10:] == 0).all()
    folded = torch.cat([bias_h, bias_w, torch.zeros(*bias_h.shape[:3], 3, dtype=torch.float64)], -1) @ columns.t()
    assert torch.equal(folded, full_bias(bias_h, bias_w))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(
    ("batch", "height", "width", "dim"),
    [(1, 1, 1, 4), (2, 3, 3, 8), (3, 5, 2, 6), (2, 7, 9, 16), (1, 13, 11, 5)],
    ids=["1x1", "3x3", "5x2", "7x9", "13x11_odd_dim"],
)
def test_fold_matches_reference_float64(batch, height, width, dim, bias):
    inputs = _inputs(batch=batch, heads=2, height=height, width=width, dim=dim, dtype=torch.float64, bias=bias)
    grad_out = torch.randn(inputs[2].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref, ref_grads = _forward_backward(attention_math, inputs, grad_out)
    out, grads = _forward_backward(attention_fold, inputs, grad_out)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    # Absolute tolerance too: on a 1x1 map the q, k and bias gradients are exactly 0.
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fold_gradcheck_float64():
    inputs = [t.detach().double().requires_grad_() for t in _inputs(batch=2, heads=2, height=2, width=3, dim=4)]
    assert torch.autograd.gradcheck(attention_fold, inputs)


@pytest.mark.parametrize("pos_emb", ["relative", "absolute", "none"])
def test_mhsa_fold_gradcheck_float64_through_layer(pos_emb):
    # Through the projection, the position tables and the kernel's own backward, non-square map.
    torch.manual_seed(0)
    layer = MHSA2d(4, heads=2, dim_head=2, pos_emb=pos_emb, ref_size=3, backend="fold").double()
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_fold_takes_half_inputs_and_float32_bias_like_sdpa():
    q, k, v, bias_h, bias_w = _inputs(height=6, width=5, dim=16)
    ref = attention_math(q, k, v, bias_h, bias_w)
    half = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = attention_fold(*half, bias_h, bias_w)  # bias stays float32, as MHSA2d passes it
    assert out.dtype == torch.bfloat16
    assert _rel_err(out, ref) < 1e-2
    out.float().sum().backward()
    assert half[0].grad.dtype == torch.bfloat16 and bias_h.grad.dtype == torch.float32


@pytest.mark.parametrize("pos_emb", ["relative", "absolute", "none"])
def test_mhsa_fold_under_cpu_autocast_is_close_to_float32(pos_emb):
    torch.manual_seed(0)
    layer = MHSA2d(32, heads=2, dim_head=16, pos_emb=pos_emb, ref_size=4, backend="math")
    x = torch.randn(2, 32, 7, 5, requires_grad=True)
    grad_out = torch.randn(2, 32, 7, 5)
    ref = layer(x)  # float32 reference
    ref_grads = torch.autograd.grad(ref, [x, *layer.parameters()], grad_out)
    layer.backend = "fold"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], grad_out.bfloat16())
    assert out.dtype == torch.bfloat16
    assert _rel_err(out, ref) < 1e-2
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) < 3e-2


def _sdpa_kernels(fn) -> set[str]:
    """Names of the aten SDPA kernels that ran in ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    return names - {"aten::scaled_dot_product_attention"}


@pytest.mark.parametrize("pos_emb", ["relative", "none"])
def test_mhsa_fold_runs_the_cpu_flash_kernel_forward_and_backward(pos_emb):
    # MHSA2d's q, k, v are strided views; fold must still hand SDPA inputs its fused kernel takes.
    torch.manual_seed(0)
    layer = MHSA2d(16, heads=2, dim_head=8, pos_emb=pos_emb, ref_size=4, backend="fold")
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    kernels = _sdpa_kernels(lambda: layer(x).sum().backward())
    assert kernels == {
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    }
    # And only that kernel: with SDPA restricted to flash it still runs (no math fallback).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        layer(x).sum().backward()


def test_sdpa_without_mask_reaches_the_fused_kernel():
    # Without a position term the sdpa path has no mask; its strided q, k, v must not send it to math.
    layer = MHSA2d(16, heads=2, dim_head=8, pos_emb="none", backend="sdpa")
    x = torch.randn(1, 16, 4, 4, requires_grad=True)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in _sdpa_kernels(lambda: layer(x).sum().backward())


def test_fold_does_not_keep_square_tensors():
    q, k, v, bias_h, bias_w = _inputs(height=12, width=12, dim=4)
    n = q.shape[2]
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        attention_fold(q, k, v, bias_h, bias_w)
    assert sizes and max(sizes) <= q.shape[0] * q.shape[1] * n * (4 + 12 + 12)  # (B, heads, N, d + H + W)


_PEAK_SCRIPT = """
import json, re, sys
from pathlib import Path
import torch
from botnet.layers.attention import attention_math
from botnet.layers.attention_paths import attention_fold

def rss(field):
    return int(re.search(rf"^{field}:\\s+(\\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024

def peak(fn, inputs):
    fn(*inputs).sum().backward()  # warm-up: one-time allocations are not what we measure
    for t in inputs:
        t.grad = None
    Path("/proc/self/clear_refs").write_text("5")
    base = rss("VmRSS")
    fn(*inputs).sum().backward()
    return rss("VmHWM") - base

torch.manual_seed(0)
side, dim = int(sys.argv[1]), int(sys.argv[2])
n = side * side
inputs = [torch.randn(1, 1, n, dim, requires_grad=True) for _ in range(3)]
inputs += [torch.randn(1, 1, n, side, requires_grad=True) for _ in range(2)]
print(json.dumps({"fold": peak(attention_fold, inputs), "math": peak(attention_math, inputs), "square": 4 * n * n,
                  "folded_row": 4 * n * (dim + 2 * side)}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_fold_peak_memory_is_linear_in_n():
    # 64x64 map, one head: one (N, N) float32 tensor is 64 MiB; one folded (N, d + H + W) tensor 2.1 MiB.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, "64", "8"], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peaks["math"] > 2 * peaks["square"]  # the measurement sees the reference's logits, weights, gradients
    # q', k', v', the output and their gradients (plus the unfolded inputs' gradients): a few
    # folded tensors, nothing the size of the logits (measured: 18 MiB, math 192 MiB).
    assert peaks["fold"] < 12 * peaks["folded_row"]
    assert peaks["fold"] < peaks["square"] / 2


def test_fold_gradients_are_deterministic():
    inputs = _inputs(batch=2, heads=4, height=9, width=8, dim=16)
    grad_out = torch.randn(inputs[2].shape)
    first = _forward_backward(attention_fold, inputs, grad_out)[1]
    second = _forward_backward(attention_fold, inputs, grad_out)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_fold_widths_pick_a_fused_kernel_per_device():
    bf16, fp32 = torch.bfloat16, torch.float32
    # CPU flash: q, k, v of one width, any width.
    assert fold_widths("cpu", fp32, 128 + 64 + 64, 128) == (256, 256)
    assert fold_widths("cpu", bf16, 128 + 96 + 96, 128) == (320, 320)
    assert fold_widths("cpu", fp32, 13, 5) == (13, 13)
    # CUDA FlashAttention (half types, <= 256): one width, a multiple of 8.
    assert fold_widths("cuda", bf16, 128 + 14 + 14, 128) == (160, 160)
    assert fold_widths("cuda", torch.float16, 128 + 64 + 64, 128) == (256, 256)
    # CUDA memory-efficient kernel (wider, or float32): v keeps its own width.
    assert fold_widths("cuda", bf16, 128 + 65 + 65, 128) == (264, 128)
    assert fold_widths("cuda", bf16, 128 + 96 + 96, 128) == (320, 128)
    assert fold_widths("cuda", fp32, 32 + 8 + 16, 32) == (56, 32)
    assert fold_widths("cuda", fp32, 13, 5) == (16, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fold_with_cuda_widths_still_computes_the_reference(monkeypatch, dtype):
    # The CUDA layouts (zero columns in q and k, v padded or not) run here through SDPA's CPU kernels.
    monkeypatch.setattr(attention_paths, "fold_widths", lambda _, *a: fold_widths("cuda", *a))
    for height, width in [(3, 5), (12, 12)]:  # bf16: 8 + 3 + 5 = 16 (flash widths), 8 + 24 = 32; v padded or not
        inputs = _inputs(height=height, width=width, dim=8, dtype=torch.float64)
        grad_out = torch.randn(inputs[2].shape, dtype=torch.float64)
        ref, ref_grads = _forward_backward(attention_math, inputs, grad_out)
        cast = [t.detach().to(dtype if i < 3 else torch.float32).requires_grad_() for i, t in enumerate(inputs)]
        out, grads = _forward_backward(attention_fold, cast, grad_out.to(dtype))
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        assert _rel_err(out, ref) < tol
        for got, want in zip(grads, ref_grads):
            assert _rel_err(got, want) < 2 * tol


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


def test_auto_backend_rules_per_device_type():
    limit = attention_paths.AUTO_MATH_MAX_ELEMENTS
    for device_type in ("cpu", "cuda"):
        assert auto_backend(device_type, 16 * 4 * 196 * 196) == "math"  # 14x14, batch 16
        assert auto_backend(device_type, limit) == "math"
    assert auto_backend("cpu", limit + 1) == "chunked"
    assert auto_backend("cuda", limit + 1) == "sdpa"
    assert auto_backend("cpu", 2 * 4 * 4096 * 4096) == "chunked"  # 64x64, batch 2


def test_auto_is_the_traceable_reference_under_compile(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert resolve_backend("auto", torch.zeros(2, 4, 4096, 8)) == "math"


def test_set_attention_backend_reaches_every_layer():
    model = create_model("botnet_tiny", num_classes=3)
    assert set_attention_backend(model, "chunked") == 1
    assert all(m.backend == "chunked" for m in model.modules() if isinstance(m, MHSA2d))
    with pytest.raises(ValueError):
        set_attention_backend(model, "nope")


def test_model_with_fold_everywhere_matches_math():
    torch.manual_seed(0)
    model = create_model("botnet_tiny", num_classes=3).eval()  # eval: BatchNorm uses fixed statistics
    x = torch.randn(2, 3, 40, 56, requires_grad=True)  # non-square input, non-square attention maps
    set_attention_backend(model, "math")
    ref = model(x)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    assert set_attention_backend(model, "fold") >= 1
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert _rel_err(out, ref) < 1e-5 and _rel_err(grad, ref_grad) < 1e-4


# --- CUDA: run on the GPU machine; skipped here -----------------------------


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["chunked", "sdpa", "fold", pytest.param("flex", marks=needs_flex)])
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
@pytest.mark.parametrize("path", ["chunked", "sdpa", "fold", pytest.param("flex", marks=needs_flex)])
def test_cuda_paths_float32_match_reference(path):
    fn = {"chunked": attention_chunked, "sdpa": attention_sdpa, "fold": attention_fold, "flex": attention_flex}[path]
    inputs = _inputs(height=8, width=16, dim=32, device="cuda")
    grad_out = torch.randn(inputs[2].shape, device="cuda")
    ref, ref_grads = _forward_backward(attention_math, inputs, grad_out)
    out, grads = _forward_backward(fn, inputs, grad_out)
    # TF32 may be on for matmuls in the fused kernels: 1e-3, not 1e-5.
    assert _rel_err(out, ref) < 1e-3
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) < 1e-3


def _cuda_sdpa_kernels(fn) -> set[str]:
    """Names of the aten SDPA kernels that ran in ``fn()`` (CPU-side dispatch of CUDA ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("side", [14, 64, 96])  # d + H + W = 156, 256 (flash's limit), 320 (memory-efficient)
def test_cuda_fold_kernel_and_memory(side):
    """bf16 fold: a fused kernel runs forward and backward (never math), memory linear in N."""
    batch, heads, dim = 2, 4, 128
    n = side * side
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = ((torch.randn(batch, heads, n, dim, device="cuda", generator=gen) * scale).bfloat16().requires_grad_()
               for scale in (dim**-0.5, 1.0, 1.0))  # fmt: skip
    bias_h, bias_w = (torch.randn(batch, heads, n, side, device="cuda", generator=gen).requires_grad_()
                      for _ in range(2))  # fmt: skip
    inputs = [q, k, v, bias_h, bias_w]
    grad_out = torch.randn(batch, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)

    def step():
        return torch.autograd.grad(attention_fold(*inputs), inputs, grad_out)

    step()
    kernels = _cuda_sdpa_kernels(step)
    fused = [name for name in kernels if any(kind in name for kind in ("flash", "efficient", "cudnn"))]
    assert any(name.endswith("_backward") for name in fused) and len(fused) >= 2, kernels
    assert not any("math" in name for name in kernels), kernels
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    # A bounded number of folded (B, heads, N, d + H + W) bf16 tensors (q', k', v', output, their
    # gradients, float32 accumulators): linear in N. At 96x96 that is well below one bf16 (N, N) tensor.
    folded = batch * heads * n * (dim + 2 * side) * 2
    assert peak < 20 * folded, (peak, folded)
    if side >= 96:
        assert peak < batch * heads * n * n * 2 / 2, peak


@needs_cuda
@pytest.mark.cuda
def test_cuda_fold_large_map_matches_reference_beyond_flash_width():
    # 96x96, d = 32: d + H + W = 224 fits flash; d = 128 (320) goes to the memory-efficient kernel.
    for dim in (32, 128):
        inputs = _inputs(batch=1, heads=2, height=96, width=96, dim=dim, device="cuda")
        inputs[0] = inputs[0] * dim**-0.5  # scaled as MHSA2d scales q
        inputs = [t.detach().bfloat16().requires_grad_() if i < 3 else t for i, t in enumerate(inputs)]
        grad_out = torch.randn(inputs[2].shape, device="cuda", dtype=torch.bfloat16)
        upcast = [t.float() if t.dtype == torch.bfloat16 else t for t in inputs]
        ref, ref_grads = _forward_backward(attention_math, upcast, grad_out.float())
        out, grads = _forward_backward(attention_fold, inputs, grad_out)
        assert _rel_err(out, ref) < 2e-2
        for got, want in zip(grads, ref_grads):
            assert _rel_err(got, want) < 5e-2
