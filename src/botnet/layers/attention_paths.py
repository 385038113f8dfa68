"""Attention paths: one function, computed in different ways.

Every path computes what :func:`~botnet.layers.attention.attention_math` (the
reference) computes,

    out_i = sum_j softmax_j(q_i . k_j + bias_h[i, y_j] + bias_w[i, x_j]) v_j

from the same inputs: scaled queries, keys and values (B, heads, N, d) and the
decomposed position logits bias_h (B, heads, N, H) and bias_w (B, heads, N, W)
(key j sits at row y_j = j // W, column x_j = j % W). They differ in what they
hold in memory and which kernels run:

``math``
    The reference: plain matmuls under autograd. Holds the (B, heads, N, N)
    logits, their biased sum and the softmax weights, and as many again in
    backward: fine for classification maps (14x14, 7x7), too much at 64x64.
``chunked``
    Query chunks; backward recomputes each chunk's logits instead of keeping
    them (as FlashAttention does). At most one chunk of logits and one of
    their gradient exist at a time, so beyond the inputs memory grows like
    N * (H + W + d), plus a fixed chunk budget. Runs on any device.
``sdpa``
    ``F.scaled_dot_product_attention`` with the bias expanded to an additive
    float mask (B, heads, N, N). The CUDA memory-efficient kernel takes it
    and returns its gradient; on CPU PyTorch picks its own kernel.
``flex``
    FlexAttention: a ``score_mod`` adds the two bias terms inside the fused,
    compiled kernel, so nothing of size N^2 is ever stored. CUDA only here.
``fold``
    The position logits folded into a wider query and key (see
    :func:`attention_fold`), so ``F.scaled_dot_product_attention`` runs
    without a mask: fused FlashAttention / memory-efficient kernels, nothing
    of size N^2, no compilation, on CPU and CUDA.
``auto``
    ``math`` while the logits are small, ``chunked`` beyond that on CPU,
    ``sdpa`` on CUDA; ``math`` under torch.compile, tracing and export (see
    :func:`resolve_backend`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .attention import attention_math

__all__ = [
    "ATTENTION_PATHS",
    "BACKENDS",
    "attention_chunked",
    "attention_flex",
    "attention_fold",
    "attention_sdpa",
    "auto_backend",
    "flex_available",
    "fold_key_columns",
    "fold_widths",
    "full_bias",
    "resolve_backend",
]

BACKENDS = ("auto", "math", "chunked", "sdpa", "flex", "fold")

# Elements of one (chunk, N) block of logits, over all batches and heads:
# 4M floats = 16 MiB, so a chunk and its gradient stay small next to the
# inputs at detection sizes, while each matmul is still large enough for BLAS.
CHUNK_ELEMENTS = 1 << 22
# ``auto`` keeps the reference path while the (B, heads, N, N) logits hold at
# most this many elements (32 MiB in float32). Measured on 2-core CPUs
# (docs/BENCHMARKS.md): at 14x14, batch 16 (2.5M) the reference is 5-12%
# faster than ``chunked`` and ``fold``; at 32x32, batch 4 (16.8M) all three
# are within about 15% of each other and ``chunked`` / ``fold`` need half the
# memory; at 64x64 the reference is slower and holds 5-6x more.
AUTO_MATH_MAX_ELEMENTS = 1 << 23


def full_bias(bias_h: Tensor | None, bias_w: Tensor | None) -> Tensor | None:
    """The (B, heads, N, N) additive position bias, ``bias_h[.., y_j] + bias_w[.., x_j]``."""
    if bias_h is None or bias_w is None:
        return None
    batch, heads, n, height = bias_h.shape
    width = bias_w.shape[-1]
    return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(batch, heads, n, height * width)


def _check_bias(bias_h: Tensor | None, bias_w: Tensor | None, n: int) -> None:
    if (bias_h is None) != (bias_w is None):
        raise ValueError("bias_h and bias_w must be given together (or both None)")
    if bias_h is not None and bias_h.shape[-1] * bias_w.shape[-1] != n:
        raise ValueError(
            f"bias_h (..., H={bias_h.shape[-1]}) and bias_w (..., W={bias_w.shape[-1]}) "
            f"do not describe the N={n} keys (H * W must equal N)"
        )


# ---------------------------------------------------------------------------
# chunked: query chunks, recomputation in backward
# ---------------------------------------------------------------------------


def _chunk_rows(batch_heads: int, n: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        chunk_size = CHUNK_ELEMENTS // max(1, batch_heads * n)
    return max(1, min(n, chunk_size))


def _chunk_weights(q: Tensor, k_t: Tensor, bias_h: Tensor | None, bias_w: Tensor | None) -> Tensor:
    """softmax(q k^T + bias) for a chunk of queries: (BH, c, N) from q (BH, c, d)."""
    logits = torch.bmm(q, k_t)
    if bias_h is not None:
        bh, c, height = bias_h.shape
        grid = logits.view(bh, c, height, bias_w.shape[-1])
        grid.add_(bias_h.unsqueeze(-1)).add_(bias_w.unsqueeze(-2))
    return logits.softmax(dim=-1)


class _ChunkedAttention(torch.autograd.Function):
    """Attention over (BH, N, d) tensors in query chunks, recomputed in backward.

    All arithmetic runs in q's dtype (float32 under autocast; float64 for
    gradcheck); the output is cast to v's dtype like the reference's.
    """

    @staticmethod
    def forward(
        q: Tensor, k: Tensor, v: Tensor, bias_h: Tensor | None, bias_w: Tensor | None, rows: int
    ) -> Tensor:
        v = v.to(q.dtype)
        k_t = k.transpose(1, 2)
        out = q.new_empty(v.shape)
        for start in range(0, q.shape[1], rows):
            sl = slice(start, start + rows)
            weights = _chunk_weights(
                q[:, sl], k_t, None if bias_h is None else bias_h[:, sl], None if bias_w is None else bias_w[:, sl]
            )
            torch.bmm(weights, v, out=out[:, sl])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        q, k, v, bias_h, bias_w, rows = inputs
        ctx.rows = rows
        ctx.v_dtype = v.dtype
        # The output (in q's dtype) gives backward its softmax term (dO . O).
        ctx.save_for_backward(q, k, v, bias_h, bias_w, output)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, bias_h, bias_w, out = ctx.saved_tensors
        rows = ctx.rows
        need_q, need_k, need_v, need_bh, need_bw = ctx.needs_input_grad[:5]
        dtype = q.dtype
        v = v.to(dtype)
        grad_out = grad_out.to(dtype)
        k_t = k.transpose(1, 2)
        v_t = v.transpose(1, 2)
        # Softmax backward: dS = P * (dP - rowsum(P * dP)), and
        # rowsum(P * dP) = rowsum(P * (dO V^T)) = dO_i . O_i, an (BH, N) vector.
        delta = (grad_out * out).sum(-1, keepdim=True)
        dq = torch.empty_like(q) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        dv = torch.zeros_like(v) if need_v else None
        dbh = torch.empty_like(bias_h) if need_bh else None
        dbw = torch.empty_like(bias_w) if need_bw else None
        for start in range(0, q.shape[1], rows):
            sl = slice(start, start + rows)
            q_c = q[:, sl]
            bh_c = None if bias_h is None else bias_h[:, sl]
            weights = _chunk_weights(q_c, k_t, bh_c, None if bias_w is None else bias_w[:, sl])
            g_c = grad_out[:, sl]
            if need_v:
                dv.baddbmm_(weights.transpose(1, 2), g_c)
            grad_logits = torch.bmm(g_c, v_t).sub_(delta[:, sl]).mul_(weights)
            del weights
            if need_q:
                torch.bmm(grad_logits, k, out=dq[:, sl])
            if need_k:
                dk.baddbmm_(grad_logits.transpose(1, 2), q_c)
            if need_bh or need_bw:
                grid = grad_logits.view(*grad_logits.shape[:2], bh_c.shape[-1], -1)
                if need_bh:
                    torch.sum(grid, dim=-1, out=dbh[:, sl])
                if need_bw:
                    torch.sum(grid, dim=-2, out=dbw[:, sl])
        if dv is not None:
            dv = dv.to(ctx.v_dtype)
        return dq, dk, dv, dbh, dbw, None


def attention_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias_h: Tensor | None = None,
    bias_w: Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Memory-lean attention: query chunks, recomputed in backward.

    Same arguments and result as :func:`attention_math` (without the weights).
    ``chunk_size`` is the number of queries per chunk; by default a chunk's
    logits over all batches and heads hold about 4M elements. Not twice
    differentiable.
    """
    batch, heads, n, _ = q.shape
    _check_bias(bias_h, bias_w, k.shape[2])
    bh = batch * heads

    def flat(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.reshape(bh, *t.shape[2:])

    rows = _chunk_rows(bh, k.shape[2], chunk_size)
    out = _ChunkedAttention.apply(flat(q), flat(k), flat(v), flat(bias_h), flat(bias_w), rows)
    return out.to(v.dtype).view(batch, heads, n, v.shape[-1])


# ---------------------------------------------------------------------------
# sdpa: PyTorch's fused kernels with an additive mask
# ---------------------------------------------------------------------------


def attention_sdpa(
    q: Tensor, k: Tensor, v: Tensor, bias_h: Tensor | None = None, bias_w: Tensor | None = None
) -> Tensor:
    """``F.scaled_dot_product_attention`` with the position bias as a float mask.

    q, k, v share one dtype (the kernels accumulate logits and softmax in
    float32 for half inputs); the (B, heads, N, N) mask is cast to it. q is
    already scaled, so the kernel's own scale is 1.
    """
    _check_bias(bias_h, bias_w, k.shape[2])
    mask = full_bias(bias_h, bias_w)
    if mask is not None:
        mask = mask.to(q.dtype)
    # Every fused kernel needs the head dimension contiguous (stride 1); MHSA2d's
    # q, k, v are views with stride N there, which would send SDPA to its math kernel.
    q, k, v_in = q.contiguous(), k.contiguous(), v.to(q.dtype).contiguous()
    return F.scaled_dot_product_attention(q, k, v_in, attn_mask=mask, scale=1.0).to(v.dtype)


# ---------------------------------------------------------------------------
# fold: position logits folded into the query and key, SDPA without a mask
# ---------------------------------------------------------------------------

# CUDA FlashAttention takes head dims up to this (q, k, v all equal).
FLASH_MAX_HEAD_DIM = 256
# CUDA memory-efficient kernel: head dims a multiple of 8 for half types
# (4 for float32); 8 serves both, and FlashAttention pads to it anyway.
CUDA_HEAD_DIM_MULTIPLE = 8


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def fold_widths(device_type: str, dtype: torch.dtype, qk_dim: int, v_dim: int) -> tuple[int, int]:
    """Widths (q and k, v) to give SDPA for a folded query / key of ``qk_dim`` columns.

    Extra columns are zeros: in q and k they add 0 to every logit, in v they
    give output columns that are sliced off. The widths are chosen so that a
    fused kernel accepts the call:

    - CPU (and any device but CUDA): PyTorch's only fused kernel is its flash
      kernel, which needs q, k, v of one width (any width), so v is padded to
      ``qk_dim``.
    - CUDA, half / bfloat16, width <= 256 after rounding to a multiple of 8:
      FlashAttention, which also needs one width; v is padded to it.
    - CUDA otherwise (float32, or the folded width above 256): the
      memory-efficient kernel, which takes a v narrower than q / k, any
      width, each a multiple of 8; v is not padded beyond that, so the
      ``weights @ v`` product does not grow with the map.

    Pure arithmetic on the device *type*, so the CUDA rules are testable
    without a GPU.
    """
    if device_type != "cuda":
        return qk_dim, qk_dim
    qk = _round_up(qk_dim, CUDA_HEAD_DIM_MULTIPLE)
    if dtype in (torch.float16, torch.bfloat16) and qk <= FLASH_MAX_HEAD_DIM:
        return qk, qk
    return qk, _round_up(v_dim, CUDA_HEAD_DIM_MULTIPLE)


def fold_key_columns(height: int, width: int, pad: int = 0, *, dtype: torch.dtype, device) -> Tensor:
    """The constant columns appended to every key: (N, H + W + pad).

    Row j (key at y_j = j // W, x_j = j % W) is ``[onehot(y_j, H), onehot(x_j, W), 0 * pad]``,
    so a query row ``[bias_h[i], bias_w[i], *]`` dotted with it gives
    ``bias_h[i, y_j] + bias_w[i, x_j]``.
    """
    n = height * width
    j = torch.arange(n, device=device)
    columns = torch.zeros(n, height + width + pad, dtype=dtype, device=device)
    columns[j, j // width] = 1
    columns[j, height + j % width] = 1
    return columns


def attention_fold(
    q: Tensor, k: Tensor, v: Tensor, bias_h: Tensor | None = None, bias_w: Tensor | None = None
) -> Tensor:
    """Attention with the position logits folded into the query and key: SDPA without a mask.

    With the decomposed position logits bias_h (B, heads, N, H) and bias_w
    (B, heads, N, W), extend every query and key by H + W columns::

        q'_i = [q_i, bias_h[i, :], bias_w[i, :]]           (B, heads, N, d + H + W)
        k'_j = [k_j, onehot(y_j, H), onehot(x_j, W)]       (B, heads, N, d + H + W)

    then ``q'_i . k'_j = q_i . k_j + bias_h[i, y_j] + bias_w[i, x_j]``, exactly
    the biased logit of the reference. ``F.scaled_dot_product_attention(q',
    k', v, scale=1)`` (q is already scaled by dim_head^-0.5 in MHSA2d, before
    both the content and the position logits, so the kernel must not scale
    again) therefore computes the BoTNet attention with no mask, which is what
    lets PyTorch pick its fused kernels: FlashAttention on CPU and CUDA, the
    memory-efficient kernel on CUDA. Their backward returns dq' (whose last
    H + W columns are the gradients of bias_h and bias_w), dk' (the one-hot
    columns are constants and take none) and dv, recomputing the logits block
    by block as the forward did. The CPU kernel's backward gives each
    (batch, head) pair to one thread, so its gradients are bitwise
    reproducible; on CUDA that is the kernel's own property
    (``benchmarks/gpu_all.py`` records it).

    Memory: the kernels keep q', k', v', the output and one log-sum-exp per
    query, O(N (d + H + W)) per head, instead of the O(N^2) logits, weights
    and mask. The price is work: q' k'^T is (d + H + W) / d times the
    content product, and where v must be padded to the same width (see
    :func:`fold_widths`) so is weights @ v; at 64x64 with d = 128 both double.

    Kernel choice (the widths from :func:`fold_widths`): on CPU, PyTorch's
    flash kernel at any width. On CUDA in half precision FlashAttention while
    d + H + W, rounded up to a multiple of 8, is at most 256 (d = 128: maps
    up to 64x64); beyond that, or in float32, the memory-efficient kernel,
    which takes any width (slower per FLOP at large widths, still O(N) in
    memory) with v left at d. If no fused kernel accepts the inputs, SDPA
    falls back to its math kernel: correct, but O(N^2) again.

    Args:
        q: (B, heads, N, d) queries, already scaled.
        k: (B, heads, N, d) keys.
        v: (B, heads, N, dv) values.
        bias_h: (B, heads, N, H) row logits, or None.
        bias_w: (B, heads, N, W) column logits, or None (given with bias_h).

    Returns:
        (B, heads, N, dv) in v's dtype. q, k, v and the bias terms are cast to
        q's dtype for the kernel (bfloat16 under autocast on CUDA); the fused
        kernels accumulate logits and softmax in float32.
    """
    _check_bias(bias_h, bias_w, k.shape[2])
    batch, heads, n, dim = q.shape
    dtype = q.dtype
    k = k.to(dtype)
    v_dim = v.shape[-1]
    extra = 0 if bias_h is None else bias_h.shape[-1] + bias_w.shape[-1]
    qk_width, v_width = fold_widths(q.device.type, dtype, dim + extra, v_dim)
    pad = qk_width - dim - extra
    if extra or pad:
        q_parts = [q] if bias_h is None else [q, bias_h.to(dtype), bias_w.to(dtype)]
        if pad:
            q_parts.append(q.new_zeros(()).expand(batch, heads, n, pad))
        q = torch.cat(q_parts, dim=-1)
        if bias_h is None:
            columns = k.new_zeros(()).expand(batch, heads, n, pad)
        else:
            columns = fold_key_columns(bias_h.shape[-1], bias_w.shape[-1], pad, dtype=dtype, device=k.device)
            columns = columns.expand(batch, heads, n, extra + pad)
        k = torch.cat([k, columns], dim=-1)
    v_in = v.to(dtype)
    if v_width > v_dim:
        v_in = F.pad(v_in, (0, v_width - v_dim))
    # Fused kernels need the head dimension contiguous: cat and pad give that; without a position
    # term this copies MHSA2d's strided views (O(N d)).
    out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v_in.contiguous(), scale=1.0)
    return out[..., :v_dim].to(v.dtype)


# ---------------------------------------------------------------------------
# flex: FlexAttention with the decomposed bias in score_mod
# ---------------------------------------------------------------------------


def flex_available() -> bool:
    """Whether this torch has FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # Compiled once per process; dynamo specialises on shapes as usual.
    return torch.compile(flex_attention, dynamic=False)


def attention_flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias_h: Tensor | None = None,
    bias_w: Tensor | None = None,
    *,
    compiled: bool = True,
) -> Tensor:
    """FlexAttention, the position bias added inside the kernel by ``score_mod``.

    The bias tensors are read in their own dtype (float32 from MHSA2d) and
    gradients flow to them. ``compiled=False`` runs PyTorch's unfused
    reference implementation of FlexAttention (slow, for checking on CPU).
    """
    from torch.nn.attention.flex_attention import flex_attention

    _check_bias(bias_h, bias_w, k.shape[2])
    score_mod = None
    if bias_h is not None:
        width = bias_w.shape[-1]

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias_h[b, h, q_idx, kv_idx // width] + bias_w[b, h, q_idx, kv_idx % width]

    fn = _compiled_flex() if compiled else flex_attention
    return fn(q, k, v.to(q.dtype), score_mod=score_mod, scale=1.0).to(v.dtype)


# ---------------------------------------------------------------------------
# choosing a path
# ---------------------------------------------------------------------------

ATTENTION_PATHS: dict[str, Callable[..., Tensor]] = {
    "math": attention_math,
    "chunked": attention_chunked,
    "sdpa": attention_sdpa,
    "flex": attention_flex,
    "fold": attention_fold,
}


def auto_backend(device_type: str, logit_elements: int) -> str:
    """What ``auto`` runs eagerly on ``device_type`` for (B, heads, N, N_keys) logits of this many elements.

    - Up to ``AUTO_MATH_MAX_ELEMENTS``: ``math``. Small maps (14x14 at batch 16,
      7x7) are dominated by the q/k/v projection; the reference's few large
      matmuls are the fastest there and its O(N^2) tensors are small.
    - Beyond, on CPU: ``chunked``. Measured against ``fold`` on a shared
      2-core CPU (docs/BENCHMARKS.md), ``chunked`` does the least work:
      single-thread CPU time at 32x32 / 48x48 / 64x64 about 0.87x / 0.8x /
      0.75x that of ``fold``, whose query and key are d + H + W wide (twice
      the content width at 64x64, and the CPU flash kernel needs v padded to
      match), and at 64x64 0.77x ``fold``'s memory. ``fold`` took less
      wall-clock time only while the machine was heavily oversubscribed
      (presumably because ``chunked`` runs many small multi-threaded ops,
      each of which waits for both threads); it stays available by name.
    - Beyond, on CUDA: ``sdpa`` (memory-efficient kernel with the bias as a
      mask) until ``fold`` and ``flex`` are measured there
      (``benchmarks/gpu_all.py``).

    Pure arithmetic on the device *type*, so the CUDA rule is testable here.
    """
    if logit_elements <= AUTO_MATH_MAX_ELEMENTS:
        return "math"
    return "sdpa" if device_type == "cuda" else "chunked"


def resolve_backend(backend: str, q: Tensor, n_keys: int | None = None) -> str:
    """The concrete path ``backend`` stands for, for queries ``q`` (B, heads, N, d).

    ``auto``: :func:`auto_backend` for q's device and the size of the
    (B, heads, N, N) logits. Under torch.compile, tracing and export it is
    always ``math``: one traceable graph for any input size, fused by the
    compiler its own way (no Python branch on sizes). A named backend is
    returned as is (ValueError for an unknown one).
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return "math"
    batch, heads, n, _ = q.shape
    return auto_backend(q.device.type, batch * heads * n * (n_keys or n))
