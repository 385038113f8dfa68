"""MHSA2d and friends against brute-force references."""

from __future__ import annotations

import itertools

import pytest
import torch

import botnet
from botnet.layers import AbsolutePosition2d, RelativePosition2d, attention_math, resize_table


def brute_force_logits(mhsa: botnet.MHSA2d, x: torch.Tensor) -> torch.Tensor:
    """Content + position logits by a double loop over all (query, key) pairs."""
    _, _, height, width = x.shape
    q, k, _ = mhsa.project(x)
    batch, heads, n, _ = q.shape
    logits = torch.empty(batch, heads, n, n, dtype=q.dtype)
    if mhsa.pos is not None:
        table_h, table_w = mhsa.pos.tables(height, width)
    for i, j in itertools.product(range(n), range(n)):
        yi, xi = divmod(i, width)
        yj, xj = divmod(j, width)
        if mhsa.pos_emb == "relative":
            position = table_h[yj - yi + height - 1] + table_w[xj - xi + width - 1]
        elif mhsa.pos_emb == "absolute":
            position = table_h[yj] + table_w[xj]
        else:
            position = torch.zeros(q.shape[-1], dtype=q.dtype)
        logits[:, :, i, j] = (q[:, :, i] * (k[:, :, j] + position)).sum(-1)
    return logits


def combined_logits(mhsa: botnet.MHSA2d, x: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    q, k, _ = mhsa.project(x)
    bias_h, bias_w = mhsa.position_logits(q, height, width)
    logits = q @ k.transpose(-2, -1)
    if bias_h is not None:
        b, h, n, _ = logits.shape
        logits = (logits.view(b, h, n, height, width) + bias_h[..., :, None] + bias_w[..., None, :]).view(b, h, n, n)
    return logits


@pytest.mark.parametrize("pos_emb", ["relative", "absolute", "none"])
@pytest.mark.parametrize("size", [(3, 5), (4, 2), (6, 6), (1, 4)])
def test_logits_match_brute_force(pos_emb: str, size: tuple[int, int]) -> None:
    # ref_size (4, 3) differs from most test sizes, so interpolated tables are covered too.
    mhsa = botnet.MHSA2d(6, heads=2, dim_head=4, pos_emb=pos_emb, ref_size=(4, 3)).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    torch.testing.assert_close(combined_logits(mhsa, x), brute_force_logits(mhsa, x))


@pytest.mark.parametrize("pos_emb", ["relative", "absolute", "none"])
def test_mhsa_output_matches_brute_force(pos_emb: str) -> None:
    mhsa = botnet.MHSA2d(6, heads=2, dim_head=4, pos_emb=pos_emb, ref_size=5).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    _, _, v = mhsa.project(x)
    weights = brute_force_logits(mhsa, x).softmax(-1)
    expected = (weights @ v).transpose(-2, -1).reshape(2, 8, 3, 4)
    out = mhsa(x)
    assert out.shape == (2, 8, 3, 4)  # heads * dim_head channels
    torch.testing.assert_close(out, expected)


def test_relative_scale_applies_to_both_logit_terms() -> None:
    # The paper scales q before both q.k and q.r: doubling dim_head's scale
    # by hand must change both terms alike.
    mhsa = botnet.MHSA2d(4, heads=1, dim_head=4, pos_emb="relative", ref_size=3).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    q, _, _ = mhsa.project(x)
    q_unscaled = mhsa.qkv(x)[:, :4].reshape(1, 1, 4, 9).transpose(-2, -1)
    torch.testing.assert_close(q, q_unscaled * 4**-0.5)


@pytest.mark.parametrize("pos_emb", ["relative", "absolute"])
def test_gradcheck(pos_emb: str) -> None:
    mhsa = botnet.MHSA2d(4, heads=2, dim_head=3, pos_emb=pos_emb, ref_size=(2, 3)).double()
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mhsa, (x,), eps=1e-6, atol=1e-5)
    # Gradients also reach the position tables and projections.
    params = [p for p in mhsa.parameters()]
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(mhsa, dict(zip([n for n, _ in mhsa.named_parameters()], ps)), (x,)),
        tuple(p.detach().requires_grad_() for p in params),
        eps=1e-6,
        atol=1e-5,
    )


def test_no_position_is_permutation_equivariant() -> None:
    mhsa = botnet.MHSA2d(8, heads=2, dim_head=4, pos_emb="none").double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    perm = torch.randperm(20)
    out = mhsa(x).flatten(2)
    x_perm = x.flatten(2)[:, :, perm].reshape(2, 8, 4, 5)
    out_perm = mhsa(x_perm).flatten(2)
    torch.testing.assert_close(out_perm, out[:, :, perm])


def test_relative_position_breaks_equivariance() -> None:
    mhsa = botnet.MHSA2d(8, heads=2, dim_head=4, pos_emb="relative", ref_size=4).double()
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    perm = torch.randperm(16)
    out_perm = mhsa(x.flatten(2)[:, :, perm].reshape(1, 8, 4, 4)).flatten(2)
    assert not torch.allclose(out_perm, mhsa(x).flatten(2)[:, :, perm])


def test_self_attention_matches_definition() -> None:
    x = torch.randn(2, 5, 3, 4)
    out, weights = botnet.self_attention(x, return_weights=True)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    expected_weights = torch.softmax(tokens @ tokens.transpose(1, 2) / 5**0.5, dim=-1)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(out, (expected_weights @ tokens).transpose(1, 2).reshape(2, 5, 3, 4))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 12))


def test_resize_same_length_is_exact() -> None:
    table = torch.randn(13, 8)
    assert torch.equal(resize_table(table, 13), table)


def test_resize_keeps_zero_offset_and_shapes() -> None:
    rel = RelativePosition2d(8, ref_size=(7, 5))
    for height, width in [(3, 9), (14, 14), (1, 1), (20, 6)]:
        table_h, table_w = rel.tables(height, width)
        assert table_h.shape == (2 * height - 1, 8) and table_w.shape == (2 * width - 1, 8)
        # The centre row (offset 0) maps onto the centre row for every length.
        torch.testing.assert_close(table_h[height - 1], rel.rel_h[6])
        torch.testing.assert_close(table_w[width - 1], rel.rel_w[4])
    absolute = AbsolutePosition2d(8, ref_size=(7, 5))
    assert torch.equal(absolute.tables(7, 5)[0], absolute.abs_h)  # reference size: the parameters, bit for bit


def test_resized_tables_interpolate_between_neighbours() -> None:
    table = torch.arange(5.0).unsqueeze(1).repeat(1, 3)  # rows 0..4, linear in the row index
    resized = resize_table(table, 9)
    # Linear data stays linear (up to edge clamping): interior rows are evenly spaced.
    steps = resized[2:-2, 0].diff()
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()))
    assert resized.min() >= 0 and resized.max() <= 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_logits_stay_float32_under_autocast(dtype: torch.dtype) -> None:
    mhsa = botnet.MHSA2d(8, heads=2, dim_head=4, pos_emb="relative", ref_size=4)
    x = torch.randn(1, 8, 4, 4) * 300
    q, k, _ = mhsa.project(x)
    # Precondition: these logits overflow half precision (max 65504).
    assert (q @ k.transpose(-2, -1)).abs().max() > 65504 or dtype == torch.bfloat16
    expected = mhsa(x)
    with torch.autocast("cpu", dtype=dtype):
        out = mhsa(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2 * expected.abs().max().item())


def test_attention_math_weights_are_distributions() -> None:
    q, k, v = (torch.randn(2, 3, 12, 4) for _ in range(3))
    bias_h, bias_w = torch.randn(2, 3, 12, 3), torch.randn(2, 3, 12, 4)
    _, weights = attention_math(q, k, v, bias_h, bias_w, return_weights=True)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 12))


def test_mhsa_rejects_bad_input() -> None:
    mhsa = botnet.MHSA2d(8, heads=2, dim_head=4)
    with pytest.raises(ValueError, match="must have 8 channels, got 3"):
        mhsa(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="4D tensor"):
        mhsa(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="pos_emb must be one of"):
        botnet.MHSA2d(8, pos_emb="rotary")
