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
    "attention_sdpa",
    "flex_available",
    "full_bias",
    "resolve_backend",
]

BACKENDS = ("auto", "math", "chunked", "sdpa", "flex")

# Elements of one (chunk, N) block of logits, over all batches and heads:
# 4M floats = 16 MiB, so a chunk and its gradient stay small next to the
# inputs at detection sizes, while each matmul is still large enough for BLAS.
CHUNK_ELEMENTS = 1 << 22
# ``auto`` keeps the reference path on CPU while the (B, heads, N, N) logits
# hold at most this many elements (32 MiB in float32). Measured on a 2-core
# CPU (docs/BENCHMARKS.md): at 14x14, batch 16 (2.5M) the reference is ~10%
# faster; at 32x32, batch 4 (16.8M) both take the same time and ``chunked``
# needs half the memory; at 64x64 ``chunked`` is faster and 6x leaner.
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
    return F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=mask, scale=1.0).to(v.dtype)


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
}


def resolve_backend(backend: str, q: Tensor, n_keys: int | None = None) -> str:
    """The concrete path ``backend`` stands for, for queries ``q`` (B, heads, N, d).

    ``auto``: the reference ``math`` while the (B, heads, N, N) logits hold at
    most ``AUTO_MATH_MAX_ELEMENTS`` elements, beyond that ``sdpa`` on CUDA and
    ``chunked`` elsewhere. Under torch.compile, tracing and export it is always
    ``math``: one traceable graph for any input size, fused by the compiler
    its own way (no Python branch on sizes). A named backend is returned as
    is (ValueError for an unknown one).
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return "math"
    batch, heads, n, _ = q.shape
    if batch * heads * n * (n_keys or n) <= AUTO_MATH_MAX_ELEMENTS:
        return "math"
    return "sdpa" if q.is_cuda else "chunked"
