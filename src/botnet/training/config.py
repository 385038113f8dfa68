"""Training settings as data: one dataclass per task, the shared part declared once.

:class:`RunConfig` holds what every trainer shares (optimiser, schedule,
precision, seed, device, run directory, ...). Task configs subclass it
(``botnet.classification.TrainConfig``, ``botnet.detection.TrainConfig``)
and add their own fields. Every field carries its own help text and value
check in its metadata, and the command line is generated from the fields
(``botnet.cli._options``), so a shared setting has one name, one meaning
and one check in every command, and the checks run both on the command line
(where the value is parsed) and on configs built in Python
(:meth:`RunConfig.validate`).

Configs also load from YAML (timm's ``-c config.yaml``): keys are field
names (``batch_size`` or ``batch-size``); an unknown key or a bad value is a
one-line error that names the file and the key. A ``base: other.yaml`` key
(relative to the file) loads that file first, so a recipe and its variant
(e.g. a ResNet twin) share one text.

A file's values are checked exactly like flags: every scalar is kept as the
text written (only ``null``, ``~`` or nothing is None) and goes through the
field's own parser, the one its command-line flag uses. YAML's own typing
would turn ``out: 2024-01-01`` into a date, ``out: 017`` into 15 and
``model: yes`` into True, none of which is what was written; read as text
they are the directory ``2024-01-01``, ``017`` and the model ``yes``, as
after ``--out``. A value of the wrong shape (a list or mapping where one
value is expected, nothing where a value is required) and a value the
parser refuses are one line naming the file, the key, what was expected
and what was given. ``model_kwargs`` entries are checked against the model
spec's field types (:func:`botnet.models.spec.check_overrides`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.checks import (Check, boolean, choice, finite_float, fraction, integer, nonneg_float, nonneg_int,
                              positive_float, positive_int, text)

__all__ = [
    "RunConfig",
    "setting",
    "flag_name",
    "redefault",
    "load_config_file",
    "config_from_dict",
    "check_value",
]


def setting(default: Any, help: str, check: Check | None = None, *, flags: tuple[str, ...] = (),
            group: str = "run", nargs: str | None = None, cli: bool = True, **kwargs: Any) -> Any:
    """A dataclass field with its command-line help, value check and extra option strings.

    Args:
        flags: extra option strings besides ``--field-name`` (e.g. ``("-b",)``).
        group: help-section title on the command line.
        nargs: for list settings (``"+"``).
        cli: False for settings that are Python/YAML-only.
    """
    metadata = {"help": help, "check": check, "flags": flags, "group": group, "nargs": nargs, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def redefault(base: type, name: str, default: Any) -> Any:
    """Field ``name`` of dataclass ``base`` with another default, same help and check (for task configs)."""
    spec = {f.name: f for f in dataclasses.fields(base)}[name]
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=spec.metadata)
    return field(default=default, metadata=spec.metadata)


def flag_name(name: str) -> str:
    """The command-line option of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def field_type_of(owner: type, spec: dataclasses.Field) -> Any:
    """The resolved type annotation of a dataclass field."""
    hints = typing.get_type_hints(owner)
    return hints.get(spec.name, Any)


def _allows_none(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    return kind is type(None) or ((origin is typing.Union or origin is types.UnionType)
                                   and type(None) in typing.get_args(kind))


def _is_bool(kind: Any) -> bool:
    return kind is bool or (_allows_none(kind) and bool in typing.get_args(kind))


def _is_dict(kind: Any) -> bool:
    args = typing.get_args(kind) if _allows_none(kind) else (kind,)
    return any(typing.get_origin(a) is dict or a is dict for a in args)


def key_values(value: Any) -> dict[str, Any]:
    """A mapping from a dict, or from ``"key=value"`` strings.

    A value is read as a YAML file's value is (:func:`yaml_text`: text as
    written, ``null`` as None, ``[256, 320]`` as a list), so the field's own
    check (e.g. the model spec's types) decides what the text means.
    """
    import yaml

    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if not isinstance(value, (str, list, tuple)):
        raise ValueError(  # noqa: TRY004 - a user's value: one line, exit 2
            f"must be key=value pairs or a mapping, got {value!r} ({type(value).__name__})")
    items = [value] if isinstance(value, str) else list(value)
    result: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"must be key=value pairs, got {item!r}")
        key, written = item.split("=", 1)
        try:
            result[key.strip()] = yaml_text(written) if written else ""
        except yaml.YAMLError:
            result[key.strip()] = written
    return result


def yaml_text(source: str) -> Any:
    """YAML with every scalar kept as the text written; only ``null``, ``~`` and nothing are None.

    YAML 1.1's implicit types guess from the text: ``2024-01-01`` becomes a
    date, ``017`` the octal 15, ``yes`` and ``on`` True, ``1_000`` 1000. A
    setting's own parser (the one its flag uses) reads the text instead, so
    a value means the same in a file as after its flag. Lists and mappings
    keep their structure.
    """
    import yaml

    class TextLoader(yaml.SafeLoader):
        """SafeLoader whose implicit ints, floats, bools and dates stay text."""

    def as_written(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
        return loader.construct_scalar(node)

    for tag in ("int", "float", "bool", "timestamp"):
        TextLoader.add_constructor(f"tag:yaml.org,2002:{tag}", as_written)
    return yaml.load(source, Loader=TextLoader)  # SafeLoader with fewer types


def _is_list(kind: Any) -> bool:
    args = typing.get_args(kind) if _allows_none(kind) else (kind,)
    return any(typing.get_origin(a) is list for a in args)


def check_value(owner: type, spec: dataclasses.Field, value: Any) -> Any:
    """``value`` converted and checked for field ``spec`` of dataclass ``owner`` (ValueError if bad)."""
    kind = field_type_of(owner, spec)
    if value is None:
        if not _allows_none(kind):
            raise ValueError("must be given (got nothing)")
        return None
    if _is_bool(kind):
        return boolean(value)
    check = spec.metadata.get("check")
    if _is_dict(kind):  # the check (if any) takes the whole mapping, e.g. the model spec's types
        values = key_values(value)
        return check(values) if check is not None else values
    if _is_list(kind):
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_single(check, item) for item in items]
    return _single(check, value, _type_check(kind))


def _single(check: Check | None, value: Any, fallback: Check | None = None) -> Any:
    """One scalar through ``check`` (else ``fallback``); a list or mapping is refused, naming its type."""
    if isinstance(value, (dict, list, tuple, set)):
        raise ValueError(  # noqa: TRY004 - a user's value: one line, exit 2
            f"must be a single value, got {value!r} (a {type(value).__name__})")
    check = check or fallback
    return check(value) if check is not None else value


def _type_check(kind: Any) -> Check | None:
    """The check a field without its own gets from its type: text, an integer or a number.

    So a setting declared without a check still reads a file's text as its
    flag would (``"8"`` -> 8), and never passes a wrong type on.
    """
    args = typing.get_args(kind) if _allows_none(kind) else (kind,)
    for candidate, check in ((str, text), (int, integer), (float, finite_float)):
        if candidate in args:
            return check
    return None


def _trainable_layers(value: Any) -> int:
    from ..models.freeze import MAX_TRAINABLE_LAYERS

    number = nonneg_int(value)
    if number > MAX_TRAINABLE_LAYERS:
        raise ValueError(f"must be in 0..{MAX_TRAINABLE_LAYERS} (stages trained, from layer4 back to the stem), "
                         f"got {value!r}")
    return number


@dataclass
class RunConfig:
    """Settings every trainer shares. Task configs subclass this with their own fields and defaults.

    ``batch_size`` is per process: under torchrun the global batch is
    ``batch_size * world_size``. ``lr`` None means the task's default rule
    (detection scales it with the global batch).
    """

    epochs: int = setting(10, "training epochs", positive_int, group="recipe")
    batch_size: int = setting(64, "images per process and step", positive_int, flags=("-b",), group="recipe")
    opt: str = setting("sgd", "optimiser: sgd (Nesterov momentum) or adamw", choice("sgd", "adamw"), group="recipe")
    lr: float | None = setting(0.1, "peak learning rate", positive_float, group="recipe")
    weight_decay: float = setting(5e-4, "weight decay, on conv / linear / projection weights only (never on norms, "
                                  "biases or position tables)", nonneg_float, flags=("--wd",), group="recipe")
    momentum: float = setting(0.9, "SGD momentum", fraction(0, 1), group="recipe")
    sched: str = setting("cosine", "learning-rate schedule after the warm-up: cosine, step (x decay-rate at each "
                         "of --decay-milestones) or constant", choice("cosine", "step", "constant"), group="recipe")
    warmup_epochs: float = setting(1.0, "linear warm-up length in epochs (fractions allowed)", nonneg_float,
                                   group="recipe")
    decay_milestones: list[float] | None = setting(None, "epochs where the step schedule multiplies the LR by "
                                                   "--decay-rate (default 2/3 and 8/9 of the run)", nonneg_float,
                                                   nargs="+", group="recipe")
    decay_rate: float = setting(0.1, "LR factor at each step milestone", fraction(0, 1, low_open=True,
                                high_open=False), group="recipe")
    min_lr_ratio: float = setting(0.0, "cosine schedule ends at this fraction of the peak LR",
                                  fraction(0, 1, high_open=False), group="recipe")
    clip_grad: float | None = setting(5.0, "clip the gradient norm to this (0: off)", nonneg_float, group="recipe")
    accum_steps: int = setting(1, "split each batch into N interleaved micro-batches (less memory; one optimiser "
                               "step)", positive_int, group="recipe")
    amp: bool = setting(False, "mixed precision autocast (bf16; fp16 uses a grad scaler)")
    amp_dtype: str = setting("bfloat16", "autocast dtype", choice("bfloat16", "float16"))
    compile: bool = setting(False, "torch.compile the model")
    seed: int = setting(0, "seed of initialisation, sampling and augmentation", nonneg_int)
    deterministic: bool = setting(False, "deterministic algorithms only")
    workers: int = setting(0, "data-loading processes (0: in the main process)", nonneg_int, flags=("-j",))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    out: str | None = setting(None, "run directory (default runs/TASK-MODEL-TIME)")
    progress: bool = setting(True, "progress bar (off: --no-progress)")
    dist_timeout: float | None = setting(None, "under torchrun: seconds that joining the process group and each "
                                         "collective may wait for the other ranks before the process fails (and "
                                         "torchrun --max-restarts starts the group again); default torch's 1800",
                                         positive_float)
    # Starting from weights (docs/TRAINING.md, "Fine-tuning"); read once, never again on --resume.
    weights_backbone: str | None = setting(
        None, "start the backbone from FILE: a ResNet-50 state dict (torchvision or timm .pth / .safetensors: the "
        "conv stages) or a botnet checkpoint or run directory (every backbone tensor, BoT blocks and position "
        "tables included); never the classifier", group="fine-tuning")
    trainable_layers: int | None = setting(
        None, "backbone stages trained, 0-5, counted from layer4 back to the stem; the others are frozen "
        "(default: train: 5; detect train: 3 with --weights-backbone, else 5)", _trainable_layers,
        group="fine-tuning")
    layer_decay: float | None = setting(
        None, "per-stage learning-rate decay (timm's): the head trains at --lr, layer4 at lr x F, layer3 at "
        "lr x F^2, ... the stem at lr x F^5 (default: off)", fraction(0, 1, low_open=True, high_open=False),
        group="fine-tuning")

    # Settings that may change when resuming; anything else must stay as the run began.
    RESUMABLE: typing.ClassVar[tuple[str, ...]] = ("epochs", "workers", "device", "progress", "dist_timeout")

    def validate(self) -> None:
        """Check every field (ValueError naming the option) and normalise (``clip_grad`` 0 -> None)."""
        for spec in dataclasses.fields(self):
            try:
                setattr(self, spec.name, check_value(type(self), spec, getattr(self, spec.name)))
            except ValueError as err:
                raise ValueError(f"{flag_name(spec.name)} {err}") from None
        if self.clip_grad == 0:
            self.clip_grad = None
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a multiple of --accum-steps {self.accum_steps} "
                "(micro-batches are equal slices of each batch)"
            )
        if self.device != "auto":
            from ..runtime.device import parse_device

            try:
                parse_device(self.device)
            except ValueError as err:
                raise ValueError(f"--device {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(cls: type[RunConfig], values: Mapping[str, Any], source: str = "settings") -> dict[str, Any]:
    """Checked field values of ``cls`` from a mapping (dashes or underscores in keys).

    Raises:
        ValueError: naming ``source`` and the key, for an unknown key or a bad value.
    """
    fields = {spec.name: spec for spec in dataclasses.fields(cls)}
    checked: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            import difflib

            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{source}: unknown key {key!r}{hint}")
        try:
            checked[name] = check_value(cls, fields[name], value)
        except ValueError as err:
            raise ValueError(f"{source}: key {key!r} {err}") from None
    return checked


def load_config_file(path: str | os.PathLike[str], cls: type[RunConfig], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The settings of a YAML file (a mapping of field names), checked against ``cls``.

    A ``base`` key names another file (relative to this one) whose settings
    this file's override.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {str(path)!r}")
    if path.resolve() in _seen:
        raise ValueError(f"{str(path)!r}: 'base' files include each other in a loop")
    try:
        values = yaml_text(path.read_text())  # scalars as written: each setting's parser reads them
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{str(path)!r}{line}: not valid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read config file {str(path)!r}: {err}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{str(path)!r}: expected a mapping of settings (key: value), got a {type(values).__name__}")
    settings: dict[str, Any] = {}
    if "base" in values:
        base = values.pop("base")
        if not isinstance(base, str):
            raise ValueError(f"{str(path)!r}: key 'base' must be a file name, got {base!r}")
        settings = load_config_file(path.parent / base, cls, _seen + (path.resolve(),))
    settings.update(config_from_dict(cls, values, source=repr(str(path))))
    return settings
