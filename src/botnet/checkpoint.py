"""Saving and loading described models: the weights with the description that rebuilds them.

A saved model is its weights plus a JSON-able description ("meta") that
rebuilds the architecture, stored by :mod:`botnet.runtime.store` (a
``.safetensors`` file with the description in its metadata, or a ``.pt``
training checkpoint with ``"model"`` and ``"meta"``; nothing is ever
unpickled). A classifier's description is ``{"format": "botnet", "version":
1, "model": registry name, "spec": ModelSpec.to_dict()}`` plus what the run
adds (``class_names``, ``img_size`` [H, W], ``mean``, ``std``, ...).

:func:`load_described` is the one loading pipeline (resolve a run directory
to its file, read weights and description, check the format, build, load
the weights, move, eval); :func:`load_model` is it for classifiers and
:func:`botnet.detection.checkpoint.load_detector` for detectors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .models.network import BoTNet, build_model
from .models.spec import ModelSpec
from .runtime.store import (CheckpointError, PathLike, atomic_write, read_weights_and_meta, resolve_checkpoint_path,
                            write_safetensors)

__all__ = ["MODEL_FORMAT", "load_described", "load_model", "model_from_meta", "model_meta", "save_model"]

MODEL_FORMAT = "botnet"


def model_meta(model: BoTNet, **extra: Any) -> dict[str, Any]:
    """The JSON-able description that rebuilds ``model`` (plus ``extra`` keys)."""
    spec = model.spec.to_dict()
    spec["num_classes"] = model.num_classes  # the head may have been reset since the model was built
    meta = {"format": MODEL_FORMAT, "version": 1, "model": model.name, "spec": spec}
    meta.update(extra)
    json.dumps(meta)  # fail now, not at load time, if something is not JSON-able
    return meta


def model_from_meta(meta: dict[str, Any]) -> BoTNet:
    """A freshly initialised model from a :func:`model_meta` description."""
    try:
        spec = ModelSpec.from_dict(dict(meta["spec"]))
        name = meta["model"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the model description is incomplete or malformed ({type(err).__name__}: {err})") from None
    return build_model(spec, name=name)


def save_model(path: PathLike, model: BoTNet, **extra: Any) -> None:
    """Write the weights as safetensors with the description in its metadata (atomically)."""
    meta = model_meta(model, **extra)
    atomic_write(path, lambda tmp: write_safetensors(tmp, model.state_dict(), meta))


def load_described(
    path: PathLike,
    kind: str,
    build: Callable[[dict[str, Any]], nn.Module],
    fmt: str,
    map_location: str | torch.device = "cpu",
    strict: Callable[[list[str], list[str]], bool] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a described model from ``.safetensors``, a ``.pt`` checkpoint or a run directory.

    Args:
        kind: what the model is, for messages ("classifier", "detector").
        build: description -> freshly built model.
        fmt: the description's ``format`` this loader reads (a description
            without one is read as a classifier's, as written by the first
            versions).
        strict: given (missing, unexpected) keys of a non-strict load,
            whether they are acceptable; None: any difference is an error.

    Returns:
        (model in eval mode on ``map_location``, description).

    Raises:
        FileNotFoundError, CheckpointError (a ValueError): one line naming the file.
    """
    path = resolve_checkpoint_path(path)
    state, meta = read_weights_and_meta(path)
    found = meta.get("format", MODEL_FORMAT)
    if found != fmt:
        raise CheckpointError(f"{str(path)!r} holds a {found!r} model, not a {kind}")
    try:
        model = build(meta)
    except CheckpointError as err:
        raise CheckpointError(f"{str(path)!r}: {err}") from None
    try:
        if strict is None:
            model.load_state_dict(state)
        else:
            missing, unexpected = model.load_state_dict(state, strict=False)
            if not strict(missing, unexpected):
                model.load_state_dict(state)  # raises with torch's list of keys
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{str(path)!r}: the weights do not fit the {kind} it describes ({first})") from None
    return model.to(map_location).eval(), meta


def load_model(path: PathLike, map_location: str | torch.device = "cpu") -> tuple[BoTNet, dict[str, Any]]:
    """Rebuild a classifier and its description from ``.safetensors``, a ``.pt`` checkpoint or a run directory.

    Returns:
        (model in eval mode, meta dict).
    """
    model, meta = load_described(path, "classifier", model_from_meta, MODEL_FORMAT, map_location)
    return model, meta  # type: ignore[return-value]
