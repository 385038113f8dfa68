"""Architectures as data: a model is a stem plus four stage specs."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["ModelSpec", "StageSpec", "check_overrides"]


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
        """A copy with fields replaced, checked by :func:`check_overrides` (ValueError naming the field)."""
        return replace(self, **check_overrides(overrides))

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


def check_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (ModelSpec field overrides) converted to the fields' types, or a one-line ValueError.

    Options reach a spec from Python, from ``--model-kwargs key=value`` and
    from a ``-c`` YAML file, where a value may be the text that was written
    (``heads: 8`` read as ``"8"``): each is converted by its field's type
    annotation, with the same rules as a flag of that type, so ``heads:
    many`` stops here with the option's name instead of deep in the model
    with a TypeError. Types: an int (``"8"``, 8; not 2.5, not a bool), a
    number, a bool (true/false, yes/no, on/off), text, None where the field
    allows it, ``ref_img_size`` as one side or [H, W], ``stages`` as four
    StageSpecs or mappings of their int fields.

    Raises:
        ValueError: an unknown option (listing the valid ones) or a value of
            the wrong type (naming the option, what it takes and what came).
    """
    _check_known(values)
    hints = typing.get_type_hints(ModelSpec)
    checked: dict[str, Any] = {}
    for name, value in values.items():
        try:
            checked[name] = _stages(value) if name == "stages" else _typed(hints[name], value)
        except ValueError as err:
            raise ValueError(f"model option {name!r} {err}") from None
    return checked


def _typed(kind: Any, value: Any) -> Any:
    """``value`` as a ``kind`` (int, float, bool, str, X | None, int | tuple[int, int]), or ValueError."""
    from ..runtime.checks import boolean, finite_float, text

    args = typing.get_args(kind)
    if type(None) in args:
        return None if value is None else _typed(next(a for a in args if a is not type(None)), value)
    if value is None:
        raise ValueError("must be given (got nothing)")
    if args and int in args:  # int | tuple[int, int]: one side or (H, W)
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"must be one side or [height, width], got {value!r}")
            return [_integer(v) for v in value]
        return _integer(value)
    if kind is bool:
        return boolean(value)
    if kind is int:
        return _integer(value)
    if kind is float:
        return finite_float(value)
    if kind is str:
        return text(value)
    raise ValueError(f"has a type ({kind}) that cannot be given as an option")


def _integer(value: Any) -> int:
    from ..runtime.checks import nonneg_int

    if isinstance(value, (list, tuple, dict)):
        raise ValueError(f"must be an integer, got {value!r}")  # noqa: TRY004 - a user's value: one line, exit 2
    return nonneg_int(value)


def _stages(value: Any) -> list[dict[str, int]]:
    """Four stages as mappings of ints (JSON-able, for config.json; ModelSpec turns them into StageSpecs)."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"must be four stages (depth, planes, stride, attention), got {value!r}")
    names = {f.name for f in fields(StageSpec)}
    stages = []
    for stage in value:
        if isinstance(stage, StageSpec):
            stage = asdict(stage)
        if not isinstance(stage, Mapping) or not set(stage) <= names or not {"depth", "planes", "stride"} <= set(stage):
            raise ValueError(f"stage {stage!r} must be a mapping of depth, planes, stride (and attention)")
        try:
            stages.append(asdict(StageSpec(**{key: _integer(v) for key, v in stage.items()})))
        except ValueError as err:
            raise ValueError(f"stage {stage!r}: {err}") from None
    return stages
