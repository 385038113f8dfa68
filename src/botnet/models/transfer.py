"""Start a model from weights trained elsewhere: match tensors by name, fit what can be fitted, report.

One matching rule for every way a run starts from weights
(``botnet train --initial-checkpoint`` / ``--weights-backbone``,
``botnet detect train --weights-backbone``, :func:`botnet.load_resnet_weights`):
a model tensor takes the source tensor of the same name when

* the shapes are equal: copied;
* it is a position table (``...pos.rel_h`` etc., (L, d)) and only the length
  differs: interpolated with :func:`botnet.layers.position.resize_table`,
  the function the model itself uses at run time for other input sizes, so a
  table made for 28 px classification serves a detector at 800 px the way
  the classifier would have served that size;
* it is the first convolution and only its input channels differ: adapted
  as timm's ``adapt_input_conv`` does (:func:`adapt_input_conv`).

Everything else is skipped with its reason, in a :class:`LoadReport`. A
source where nothing fits is an error naming the file (another architecture,
not a partial start).

Sources (:func:`read_weights_source`): a botnet checkpoint (``.safetensors``
or ``.pt`` with its model description) or a run directory (its
``best.safetensors``, as ``botnet eval`` reads it; name ``last.safetensors``
to take the final epoch), or a plain state dict (a torchvision / timm
ResNet-50 file). Files are read without unpickling anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..layers.blocks import BoTBlock
from ..layers.position import resize_table


__all__ = [
    "LoadReport",
    "WeightsSource",
    "adapt_input_conv",
    "classifier_prefix",
    "load_backbone_weights",
    "load_initial_checkpoint",
    "read_state_dict",
    "read_weights_source",
    "transfer_state",
    "unwrap_state_dict",
]


@dataclass
class LoadReport:
    """What :func:`load_resnet_weights` did.

    Attributes:
        loaded: model keys filled from the source.
        skipped: source keys not used, with the reason.
        missing: model keys left at their initial values.
        resized: position tables interpolated to this model's length, with both shapes.
        adapted: tensors fitted to this model (the first convolution's input channels), and how.
        source, kind: the file read, and "botnet" (a described checkpoint) or "state dict".
        note: anything else worth saying (a checkpoint of another registered model).
    """

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    resized: dict[str, str] = field(default_factory=dict)
    adapted: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    kind: str | None = None
    note: str | None = None

    @property
    def partial(self) -> bool:
        """Whether some model tensors kept their initial values."""
        return bool(self.missing)

    def summary(self) -> str:
        """One line: counts, then the resized / adapted tensors and the reasons for skips."""
        text = f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, left {len(self.missing)} at init"
        if self.missing:
            text += " (partial match)"
        if self.note:
            text += f"; {self.note}"
        if self.resized:
            text += f"; {len(self.resized)} position tables interpolated ({next(iter(self.resized.values()))}, ...)"
        text += "".join(f"; {key}: {what}" for key, what in self.adapted.items())
        reasons: dict[str, int] = {}
        for why in self.skipped.values():
            reasons[why] = reasons.get(why, 0) + 1
        if reasons:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda x: -x[1]))
        return text

    def to_dict(self) -> dict[str, object]:
        """The JSON form written to a run's ``config.json`` (``initial_weights``)."""
        return {"source": self.source, "kind": self.kind, "summary": self.summary(), "partial": self.partial,
                "loaded": self.loaded, "skipped": self.skipped, "missing": self.missing, "resized": self.resized,
                "adapted": self.adapted, "note": self.note}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from .safetensors or a torch file, never unpickling code.

    Accepts a bare state dict or one wrapped under ``state_dict``, ``model``
    or ``model_state`` (common checkpoint layouts), and strips a DDP
    ``module.`` prefix. A damaged file or one that carries pickled objects is
    a one-line error from :mod:`botnet.checkpoint` naming the file.
    """
    from ..runtime.store import load_checkpoint, read_safetensors

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    state = read_safetensors(path)[0] if path.endswith(".safetensors") else load_checkpoint(path)
    return unwrap_state_dict(state, repr(path))


def unwrap_state_dict(state: object, what: str) -> dict[str, Tensor]:
    """The tensors of a bare or wrapped (``state_dict``/``model``/``model_state``) state dict."""
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{what} does not hold a state dict (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    consume_prefix_in_state_dict_if_present(tensors, "module.")  # DistributedDataParallel's wrapper
    return tensors


# Parameter names of the position tables (layers/position.py): (length, dim_head) each.
POSITION_TABLES = ("pos.rel_h", "pos.rel_w", "pos.abs_h", "pos.abs_w")


@dataclass
class WeightsSource:
    """Weights read from a file.

    Attributes:
        path: the file the tensors came from (a run directory resolved to its file).
        state: name -> tensor.
        meta: the botnet model description, or None for a plain state dict (e.g. a ResNet-50 file).
    """

    path: str
    state: dict[str, Tensor]
    meta: dict[str, Any] | None

    @property
    def is_botnet(self) -> bool:
        return self.meta is not None

    def describe(self) -> str:
        if self.meta is None:
            return f"{self.path!r} (a plain state dict, {len(self.state)} tensors)"
        return f"{self.path!r} (a botnet {self.meta.get('model', '?')} checkpoint)"


def read_weights_source(path: str | os.PathLike[str]) -> WeightsSource:
    """The tensors (and botnet description, if any) of a weights file or run directory.

    Raises:
        FileNotFoundError: nothing at ``path`` (or a run directory without weights).
        CheckpointError (a ValueError): a damaged file, or one that carries pickled objects (refused, never run).
    """
    from ..runtime.store import (
        load_checkpoint,
        read_safetensors,
        resolve_checkpoint_path,
    )

    resolved = resolve_checkpoint_path(path)
    if not resolved.exists():
        raise FileNotFoundError(f"no weights file or run directory at {str(path)!r}")
    name = str(resolved)
    if resolved.suffix == ".safetensors":
        state, metadata = read_safetensors(resolved)
        meta = _botnet_meta(metadata.get("botnet"), name)
        return WeightsSource(name, unwrap_state_dict(state, repr(name)), meta)
    checkpoint = load_checkpoint(resolved)
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else None
    if meta is not None and meta.get("format", "botnet") != "botnet":
        raise ValueError(f"{name!r} holds a {meta.get('format')!r} model, not a botnet classifier or backbone")
    return WeightsSource(name, unwrap_state_dict(checkpoint, repr(name)), meta)


def _botnet_meta(text: str | None, name: str) -> dict[str, Any] | None:
    if text is None:
        return None
    from ..runtime.store import CheckpointError

    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{name!r} has a damaged model description: {err}") from None
    if meta.get("format", "botnet") != "botnet":
        raise ValueError(f"{name!r} holds a {meta.get('format')!r} model, not a botnet classifier or backbone")
    return meta


def adapt_input_conv(in_chans: int, weight: Tensor) -> Tensor | None:
    """A first-convolution weight (O, I, k, k) for ``in_chans`` inputs, or None if there is no rule.

    timm's ``adapt_input_conv`` rules, written here because timm is optional
    and its function does not cover grey to colour:

    * to 1 channel: the sum over the input channels (a grey image seen by
      RGB filters is R = G = B, whose response is the summed filter's);
    * from 3 channels to C: the RGB filters repeated and scaled by 3 / C (timm);
    * from 1 channel to C (grey weights, colour model): the filter repeated
      and scaled by 1 / C, so an image with equal channels gives the
      pretrained response.

    Computed in float32 and returned in ``weight``'s dtype.
    """
    source_chans = weight.shape[1]
    if source_chans == in_chans:
        return weight
    w = weight.float()
    if in_chans == 1:
        adapted = w.sum(dim=1, keepdim=True)
    elif source_chans in (1, 3):
        repeat = -(-in_chans // source_chans)
        adapted = w.repeat(1, repeat, 1, 1)[:, :in_chans] * (source_chans / in_chans)
    else:
        return None
    return adapted.to(weight.dtype)


def classifier_prefix(model: nn.Module) -> str | None:
    """``"fc."`` for a model with a classifier (timm's ``get_classifier(name_only=True)``), else None."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    try:
        name = get(name_only=True)
    except TypeError:
        return None
    head = getattr(model, name, None)
    return f"{name}." if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else None


def _is_table(key: str) -> bool:
    return key.endswith(POSITION_TABLES)


def transfer_state(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    exclude: Mapping[str, str] | None = None,
    source: str = "the source",
    first_conv: str = "conv1.weight",
    hint: str = "is it a checkpoint of another architecture?",
) -> LoadReport:
    """Load every tensor of ``state`` that fits ``model`` (see the module docstring); report the rest.

    Args:
        exclude: key prefix -> reason: model keys under these prefixes are
            never loaded (the classifier for a backbone start, BoT blocks
            from a ResNet).
        source: names the source in the error.
        first_conv: the key whose input channels may be adapted.
        hint: the end of the error when nothing fits.

    Returns:
        A :class:`LoadReport` (``loaded``, ``skipped`` source keys with
        reasons, ``missing`` model keys left at their initial values,
        ``resized`` tables and ``adapted`` tensors with what was done).

    Raises:
        ValueError: no tensor fits (another architecture).
    """
    exclude = dict(exclude or {})
    target = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        wanted = target.get(key)
        excluded = next((why for prefix, why in exclude.items() if key.startswith(prefix)), None)
        if wanted is None:
            report.skipped[key] = "not in model"
        elif excluded is not None:
            report.skipped[key] = excluded
        elif wanted.shape == value.shape:
            to_load[key] = value
        elif _is_table(key) and value.dim() == 2 and wanted.dim() == 2 and value.shape[1] == wanted.shape[1]:
            to_load[key] = resize_table(value.float(), wanted.shape[0]).to(value.dtype)
            report.resized[key] = f"{tuple(value.shape)} -> {tuple(wanted.shape)}"
        elif key == first_conv and value.dim() == 4 and value.shape[0] == wanted.shape[0] \
                and value.shape[2:] == wanted.shape[2:] and adapt_input_conv(wanted.shape[1], value) is not None:
            to_load[key] = adapt_input_conv(wanted.shape[1], value)  # type: ignore[assignment]
            rule = "summed" if wanted.shape[1] == 1 else "repeated and rescaled"
            report.adapted[key] = f"{value.shape[1]} -> {wanted.shape[1]} input channels ({rule}, as timm's adapt_input_conv)"
        else:
            report.skipped[key] = f"shape {tuple(value.shape)} != model's {tuple(wanted.shape)}"
    if not to_load:
        reasons = sorted(set(report.skipped.values()))[:4]
        raise ValueError(
            f"{source}: no tensor of the source fits the model ({getattr(model, 'name', type(model).__name__)}; "
            f"{len(state)} source tensors; reasons: {reasons}); {hint}"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(set(target) - set(to_load))
    return report


def _describe_source(report: LoadReport, model: nn.Module, source: WeightsSource) -> None:
    """Fill the report's source fields; note a checkpoint of another registered model (a likely mix-up)."""
    report.source, report.kind = source.path, "botnet" if source.is_botnet else "state dict"
    theirs, ours = (source.meta or {}).get("model"), getattr(model, "name", None)
    if theirs and ours and theirs != ours:
        report.note = f"the checkpoint holds a {theirs}, this model is a {ours}"


def load_initial_checkpoint(model: nn.Module, source: WeightsSource) -> LoadReport:
    """timm's ``--initial-checkpoint``: every tensor that fits, the classifier only if its class count matches.

    A classifier for another number of classes is left at its fresh
    initialisation (it is reported under ``skipped``).
    """
    report = transfer_state(model, source.state, source=repr(source.path))
    head = classifier_prefix(model)
    if head is not None and any(k.startswith(head) for k in report.skipped):
        classes = getattr(model, "num_classes", "?")
        found = source.state.get(f"{head}bias")
        theirs = found.shape[0] if found is not None else "?"
        for key in [k for k in report.skipped if k.startswith(head)]:
            report.skipped[key] = f"classifier for {theirs} classes, this model has {classes}: re-initialised"
    _describe_source(report, model, source)
    return report


def load_backbone_weights(model: nn.Module, source: WeightsSource) -> LoadReport:
    """torchvision's ``--weights-backbone``: everything but the classifier.

    From a botnet checkpoint, every backbone tensor (BoT blocks and position
    tables included). From a plain state dict (a ResNet-50), the
    convolutional parts only: a BoT block's tensors keep their
    initialisation (a ResNet's c5 shares their names, not their function;
    :func:`botnet.load_resnet_weights`).
    """
    exclude: dict[str, str] = {}
    head = classifier_prefix(model)
    if head is not None:
        exclude[head] = "classifier (a backbone start never loads it)"
    if not source.is_botnet:
        exclude.update({f"{name}.": "inside an attention (BoT) block: a ResNet's c5 is not attention"
                        for name, module in model.named_modules() if isinstance(module, BoTBlock)})
    report = transfer_state(model, source.state, exclude=exclude, source=repr(source.path))
    for key in report.skipped:
        if key.startswith("fc."):  # also when the model has no classifier (a detection backbone)
            report.skipped[key] = "classifier (a backbone start never loads it)"
    _describe_source(report, model, source)
    return report

