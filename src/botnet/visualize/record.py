"""Record what the attention layers of a model look at, without changing it.

:func:`record_attention` puts a forward hook on chosen :class:`~botnet.layers.MHSA2d`
layers. The hook reads the layer's input and recomputes, with the layer's own
public pieces (``project`` and ``position_logits``) and the reference path
:func:`~botnet.layers.attention_math`, everything a reader wants to see:

* the attention weights ``softmax_j(logits)``, (B, heads, N, N), N = H * W,
  tokens in row-major order (token ``y * W + x`` is feature-map pixel (y, x));
* their split into content logits ``q_i . k_j`` and position logits
  ``q_i . (r_h[y_j - y_i] + r_w[x_j - x_i])`` (or the absolute variant);
* the feature-map size (H, W) and the channel norm of the input map.

The model's own forward pass is untouched: the hook only reads its input and
never returns a value, so the output is bit-for-bit the same with or without
recording, whichever attention path (fused kernel, SDPA, chunks) the layer
uses. The recomputation always falls back to the reference path: q, k, v come
from the layer's ``project`` in the layer's dtype (under the caller's autocast
state), logits and softmax are float32 (float64 for a float64 model) with
autocast disabled, as the layer's own forward does them.

Memory: three (B, heads, N, N) float32 tensors per recorded layer, e.g.
3 x 4 x 196^2 x 4 bytes = 1.8 MB for BoT50's first c5 layer at 224 px, but
0.8 GB at 1024 px (64 x 64 tokens). Record only the layers you need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import MHSA2d, RelativePosition2d, attention_math

__all__ = ["AttentionRecord", "attention_layers", "select_attention_layers", "record_attention"]

LayerSelector = int | str


@dataclass
class AttentionRecord:
    """What one :class:`MHSA2d` computed in one forward pass (float32 or float64, detached).

    Attributes:
        name: the layer's qualified module name, e.g. ``"layer4.0.attn"``.
        index: its position among the model's MHSA2d layers (forward order).
        size: the attended feature-map size (H, W); N = H * W.
        weights: (B, heads, N, N) attention weights; row i is where token i
            looks, a probability distribution over the N keys.
        content_logits: (B, heads, N, N) ``q_i . k_j`` (q scaled by dim_head^-0.5).
        position_logits: (B, heads, N, N) position part of the logits, or None
            for ``pos_emb="none"``. ``weights = softmax(content + position)``.
        position_table_logits: the position logits of the mean query (the
            query-independent summary of what positions a head prefers):
            (B, heads, 2H-1, 2W-1) indexed by key-minus-query offset
            (dy + H - 1, dx + W - 1) for relative positions; (B, heads, H, W)
            indexed by key position for absolute ones; None without.
            Logits are linear in q, so this is also the average over queries.
        input_norm: (B, H, W) L2 norm over channels of the layer's input map
            (where the features are strong).
        pos_emb: the layer's position encoding, ``"relative"``, ``"absolute"`` or ``"none"``.
    """

    name: str
    index: int
    size: tuple[int, int]
    weights: Tensor
    content_logits: Tensor
    position_logits: Tensor | None
    position_table_logits: Tensor | None
    input_norm: Tensor
    pos_emb: str

    @property
    def heads(self) -> int:
        return self.weights.shape[1]

    def token(self, y: int, x: int) -> int:
        """Row-major token index of feature-map pixel (y, x)."""
        height, width = self.size
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"feature-map pixel (y={y}, x={x}) is outside the {height}x{width} map of {self.name}")
        return y * width + x

    def query_map(self, y: int, x: int, which: str = "weights") -> Tensor:
        """Where the query at feature-map pixel (y, x) looks: (B, heads, H, W).

        ``which`` is ``"weights"``, ``"content_logits"`` or ``"position_logits"``.
        """
        if which not in ("weights", "content_logits", "position_logits"):
            raise ValueError(f"which must be 'weights', 'content_logits' or 'position_logits', got {which!r}")
        values = getattr(self, which)
        if values is None:
            raise ValueError(f"{self.name} has no position logits (pos_emb='none')")
        return values[:, :, self.token(y, x)].reshape(values.shape[0], values.shape[1], *self.size)


def attention_layers(model: nn.Module) -> list[tuple[str, MHSA2d]]:
    """(qualified name, layer) of every MHSA2d in ``model``, in registration (forward) order.

    A bare MHSA2d passed as ``model`` is named ``"MHSA2d"``.
    """
    return [
        (name or type(module).__name__, module) for name, module in model.named_modules() if isinstance(module, MHSA2d)
    ]


def _describe(layers: list[tuple[str, MHSA2d]]) -> str:
    return ", ".join(f"{i}: {name!r}" for i, (name, _) in enumerate(layers))


def select_attention_layers(
    model: nn.Module, layers: LayerSelector | Sequence[LayerSelector] | None = None
) -> list[tuple[int, str, MHSA2d]]:
    """Resolve ``layers`` to (index, name, layer) triples, in the given order.

    Args:
        layers: None (all MHSA2d layers); an index among them (negative counts
            from the end; ``-1`` is the last); a qualified module name such as
            ``"layer4.0.attn"`` or the name of a module holding exactly one,
            such as the block ``"layer4.0"``; or a sequence of these.

    Raises:
        ValueError: the model has no MHSA2d layer, or a selector matches none
            (the message lists the available layers).
    """
    found = attention_layers(model)
    if not found:
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} has no attention (MHSA2d) layers to record")
    if layers is None:
        return [(i, name, layer) for i, (name, layer) in enumerate(found)]
    selectors = [layers] if isinstance(layers, (int, str)) else list(layers)
    chosen: list[tuple[int, str, MHSA2d]] = []
    for selector in selectors:
        if isinstance(selector, bool) or not isinstance(selector, (int, str)):
            raise TypeError(f"a layer is selected by index or name, got {selector!r}")
        if isinstance(selector, int):
            if not -len(found) <= selector < len(found):
                raise ValueError(
                    f"attention layer index {selector} is out of range: the model has {len(found)} "
                    f"MHSA2d layers ({_describe(found)})"
                )
            index = selector % len(found)
        else:
            matches = [i for i, (name, _) in enumerate(found) if name == selector or name.startswith(selector + ".")]
            if len(matches) != 1:
                problem = "matches no attention layer" if not matches else f"matches {len(matches)} attention layers"
                raise ValueError(
                    f"layer {selector!r} {problem}; choose one of {_describe(found)} "
                    "(by index or name)"
                )
            index = matches[0]
        chosen.append((index, *found[index]))
    return chosen


@torch.no_grad()
def _compute_record(layer: MHSA2d, x: Tensor, name: str, index: int) -> AttentionRecord:
    batch, _, height, width = x.shape
    n = height * width
    # q, k, v exactly as the layer projects them (the hook runs under the
    # caller's autocast state, so in the same dtype); logits in float32
    # (float64 for a float64 model), as the layer computes them.
    q, k, v = layer.project(x.detach())
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        bias_h, bias_w = layer.position_logits(q, height, width)
        content = q @ k.transpose(-2, -1)
        position = None
        if bias_h is not None and bias_w is not None:
            bias_h, bias_w = bias_h.to(dtype), bias_w.to(dtype)
            position = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(batch, layer.heads, n, n)
        _, weights = attention_math(q, k, v, bias_h, bias_w, return_weights=True)
        table = _position_table_logits(layer, q, bias_h, bias_w, height, width)
    return AttentionRecord(
        name=name,
        index=index,
        size=(height, width),
        weights=weights,
        content_logits=content,
        position_logits=position,
        position_table_logits=table,
        input_norm=x.detach().to(dtype).norm(dim=1),
        pos_emb=layer.pos_emb,
    )


def _position_table_logits(
    layer: MHSA2d, q: Tensor, bias_h: Tensor | None, bias_w: Tensor | None, height: int, width: int
) -> Tensor | None:
    if bias_h is None or bias_w is None:
        return None
    if isinstance(layer.pos, RelativePosition2d):
        # Offsets the map cannot show for a single query (e.g. dy = H - 1 is
        # only reachable from the top row) are read from the tables directly.
        rel_h, rel_w = (t.to(q.dtype) for t in layer.pos.tables(height, width))
        q_mean = q.mean(dim=2)  # (B, heads, d)
        table_h = q_mean @ rel_h.t()  # (B, heads, 2H-1)
        table_w = q_mean @ rel_w.t()  # (B, heads, 2W-1)
        return table_h[..., :, None] + table_w[..., None, :]
    # Absolute (or any position term that depends only on the key): the mean
    # over queries of the decomposed logits.
    return bias_h.mean(dim=2)[..., :, None] + bias_w.mean(dim=2)[..., None, :]


@contextmanager
def record_attention(
    model: nn.Module, layers: LayerSelector | Sequence[LayerSelector] | None = None
) -> Iterator[dict[str, AttentionRecord]]:
    """Record the attention of chosen MHSA2d layers during forward passes.

    Yields a dict, filled by each forward pass inside the ``with`` block,
    from layer name to the :class:`AttentionRecord` of the most recent call of
    that layer. The model's outputs are unchanged (the hooks only read); the
    records come from the reference path (logits in at least float32) whatever
    attention path the layer itself uses. Hooks are removed on exit, also after an exception.

    Args:
        model: any module containing :class:`MHSA2d` layers (a BoTNet, a
            BottleStack, a detector backbone, ...).
        layers: which layers, see :func:`select_attention_layers` (default: all).

    Example:
        >>> model = create_model("botnet50").eval()
        >>> with record_attention(model, layers="layer4.0.attn") as records:
        ...     model(torch.randn(1, 3, 224, 224))
        >>> rec = records["layer4.0.attn"]
        >>> rec.size, rec.weights.shape
        ((14, 14), torch.Size([1, 4, 196, 196]))
    """
    records: dict[str, AttentionRecord] = {}
    handles = []

    def make_hook(index: int, name: str):
        def hook(layer: MHSA2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            records[name] = _compute_record(layer, inputs[0], name, index)

        return hook

    try:
        for index, name, layer in select_attention_layers(model, layers):
            handles.append(layer.register_forward_hook(make_hook(index, name)))
        yield records
    finally:
        for handle in handles:
            handle.remove()
