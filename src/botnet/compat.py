"""bottleneck-transformer-pytorch's ``BottleStack`` keywords, building the paper's stage.

Users of the ``bottleneck-transformer-pytorch`` package (``pip install
bottleneck-transformer-pytorch``) write

    BottleStack(dim=1024, fmap_size=14, dim_out=2048, proj_factor=4,
                downsample=True, heads=4, dim_head=128, rel_pos_emb=True,
                activation=nn.ReLU())

:func:`bottle_stack` takes exactly those keywords and returns botnet's
:class:`~botnet.layers.BottleStack`, which differs from that package's
stack where the package departs from the paper (see docs/MIGRATING.md):

* the shortcut of the downsampling block is a 1x1 stride-2 convolution and
  BN, as in the paper and ResNet (the package uses a 3x3 stride-2
  convolution, BN and an activation: 16.8M more parameters at
  ``dim=1024``, ``dim_out=2048``, most of the gap between the package's
  BoT50, 37.6M, and the paper's 20.8M);
* ``fmap_size`` is only the size the position tables are made for: inputs
  of any other size, square or not, interpolate them (the package asserts
  that the input is exactly ``fmap_size``);
* the 2x2 pooling after attention rounds up (``ceil_mode``), so odd sizes
  keep their last row and column, in step with the stride-2 shortcut.

The package's ``rel_pos_emb=False`` (its default) means absolute position
logits; it maps to ``pos_emb="absolute"`` here, ``True`` to ``"relative"``.
"""

from __future__ import annotations

from torch import nn

from .layers.blocks import ACT_LAYERS, BottleStack

__all__ = ["bottle_stack"]

_ACTIVATIONS = tuple(ACT_LAYERS.values())


def bottle_stack(
    *,
    dim: int,
    fmap_size: int | tuple[int, int],
    dim_out: int = 2048,
    proj_factor: int = 4,
    num_layers: int = 3,
    heads: int = 4,
    dim_head: int = 128,
    downsample: bool = True,
    rel_pos_emb: bool = False,
    activation: nn.Module | type[nn.Module] = nn.ReLU,
) -> BottleStack:
    """The paper's stage of BoT blocks from bottleneck-transformer-pytorch's ``BottleStack`` keywords.

    Same keywords and defaults as that package. The result is exactly
    ``botnet.BottleStack(dim, dim_out // proj_factor, depth=num_layers,
    stride=2 if downsample else 1, heads=heads, dim_head=dim_head,
    pos_emb=..., ref_size=fmap_size, act_layer=type(activation))``.

    Args:
        dim: input channels (1024 to replace a ResNet-50's ``layer4``, c5).
        fmap_size: feature-map size at the reference image size (14 for
            c5's input at 224 px): the size the position tables are made
            for, *not* a constraint on inputs.
        dim_out: output channels, ``proj_factor`` times the bottleneck width.
        proj_factor: must be 4, the ResNet bottleneck's expansion (the
            width inside each block is ``dim_out // 4``).
        num_layers: number of blocks.
        heads, dim_head: attention heads and channels per head.
        downsample: the first block halves the size (after attending at the
            input's size, as in the paper).
        rel_pos_emb: True for the paper's 2D relative position logits,
            False (the package's default) for absolute ones.
        activation: ``nn.ReLU`` or ``nn.SiLU``, as a class or an instance
            (a fresh in-place one is made per block).

    Shape: (B, dim, H, W) -> (B, dim_out, ceil(H / s), ceil(W / s)), s = 2 if
    ``downsample`` else 1, for any H, W.

    Raises:
        ValueError: ``proj_factor`` other than 4, ``dim_out`` not a multiple
            of it, or an activation other than ReLU / SiLU.
    """
    if proj_factor != 4:
        raise ValueError(
            f"proj_factor must be 4 (the ResNet bottleneck expansion botnet's blocks use), got {proj_factor}"
        )
    if dim_out % proj_factor:
        raise ValueError(f"dim_out={dim_out} must be a multiple of proj_factor={proj_factor}")
    act_layer = activation if isinstance(activation, type) else type(activation)
    if not issubclass(act_layer, _ACTIVATIONS):
        raise ValueError(
            f"activation must be nn.ReLU or nn.SiLU (a class or an instance), got {activation!r}"
        )
    return BottleStack(
        dim,
        dim_out // proj_factor,
        depth=num_layers,
        stride=2 if downsample else 1,
        heads=heads,
        dim_head=dim_head,
        pos_emb="relative" if rel_pos_emb else "absolute",
        ref_size=fmap_size,
        act_layer=act_layer,
    )
