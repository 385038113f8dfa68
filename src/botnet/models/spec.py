"""Architectures as data: a model is a stem plus four stage specs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["StageSpec", "ModelSpec"]


@dataclass(frozen=True)
class StageSpec:
    """One residual stage (torchvision's ``layerN``; the paper's c2..c5).

    Attributes:
        depth: number of bottleneck blocks.
        planes: bottleneck width; the stage outputs ``4 * planes`` channels.
        stride: stride of the first block (1 or 2).
        attention: how many of the stage's last blocks are BoT blocks.
    """

    depth: int
    planes: int
    stride: int
    attention: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """A whole network. Every field can be overridden in ``create_model``.

    Attributes:
        stages: the four stages c2..c5.
        stem: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max pool,
            reduction 4) or ``"small"`` (3x3 stride-1 conv, no pool, for
            28-64 px images).
        stem_width: channels of the stem conv.
        act: ``"relu"`` or ``"silu"`` for every block and the stem.
        se_ratio: squeeze-excitation ratio on each block's output (0: none).
        heads, dim_head: MHSA heads and channels per head (None: planes // heads).
        pos_emb: ``"relative"``, ``"absolute"`` or ``"none"``.
        ref_img_size: image size the position tables are made for (a
            reference for interpolation, not a constraint on inputs); one
            side or (H, W), always held as (H, W).
        zero_init_last: zero each block's last BN gamma (authors' init).
        num_classes, in_chans, drop_rate: head and input.
        global_pool: the head's pooling, timm's names: ``"avg"`` (the
            ResNet's), ``"max"``, ``"avgmax"``, ``"catavgmax"`` (average and
            max concatenated: the classifier sees twice the channels) or
            ``""`` (none: ``num_classes=0`` gives the c5 map, a classifier
            gives per-position logits).
    """

    stages: tuple[StageSpec, StageSpec, StageSpec, StageSpec]
    stem: str = "imagenet"
    stem_width: int = 64
    act: str = "relu"
    se_ratio: float = 0.0
    heads: int = 4
    dim_head: int | None = None
    pos_emb: str = "relative"
    ref_img_size: int | tuple[int, int] = 224
    zero_init_last: bool = True
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0
    global_pool: str = "avg"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # One form everywhere: the stages as StageSpecs, the reference size as (H, W).
        object.__setattr__(self, "stages", tuple(
            s if isinstance(s, StageSpec) else StageSpec(**s) for s in self.stages))
        ref = self.ref_img_size
        object.__setattr__(self, "ref_img_size", (int(ref), int(ref)) if isinstance(ref, int) else
                           (int(ref[0]), int(ref[1])))

    def with_overrides(self, **overrides: Any) -> ModelSpec:
        """A copy with fields replaced; unknown names raise a ValueError listing the valid ones."""
        _check_known(overrides)
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-able data (stages as dicts, ``ref_img_size`` as [H, W]); :meth:`from_dict` inverts it."""
        values = asdict(self)
        values["ref_img_size"] = list(self.ref_img_size)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        """The spec :meth:`to_dict` gave (or an older one: an int ``ref_img_size`` is read as a square).

        Raises:
            ValueError: a key that is not a field (the same policy as
                :meth:`with_overrides`: a description this version cannot
                build exactly is never built approximately), or a missing
                ``stages``.
        """
        _check_known(values)
        if "stages" not in values:
            raise ValueError("a model spec needs 'stages'")
        return cls(**values)

    @property
    def uses_attention(self) -> bool:
        return any(stage.attention for stage in self.stages)

    @property
    def total_stride(self) -> int:
        """Input pixels per c5 position along each side."""
        stride = 4 if self.stem == "imagenet" else 1
        for stage in self.stages:
            stride *= stage.stride
        return stride


def _check_known(values: dict[str, Any]) -> None:
    valid = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(valid)}")
