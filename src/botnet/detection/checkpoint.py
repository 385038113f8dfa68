"""Saving and loading detectors like classifiers: weights with the description that rebuilds them.

A detector's description ("meta") is ``{"format": "botnet-detection",
"version": 1, "config": DetectorConfig, "backbone_meta": the exact backbone
spec}`` plus ``class_names`` and ``category_ids``; it travels with the
weights through :mod:`botnet.runtime.store` as a classifier's does
(:mod:`botnet.checkpoint`):

* ``*.safetensors``: weights, description in the metadata under ``"botnet"``;
* ``*.pt``: a training checkpoint dict with at least ``"model"`` and ``"meta"``.

A training run writes ``best.pt``, ``last.pt``, ``best.safetensors`` and
``last.safetensors`` in its folder; :func:`load_detector` takes any of them
or the folder, through the same pipeline as :func:`botnet.checkpoint.load_model`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_described
from ..runtime.distributed import unwrap
from ..runtime.store import CheckpointError, PathLike, atomic_write, write_safetensors
from .models import DetectorConfig, build_from_config

__all__ = ["META_FORMAT", "detector_meta", "load_detector", "save_detector"]

META_FORMAT = "botnet-detection"


def detector_meta(model: nn.Module, config: DetectorConfig, **extra: Any) -> dict[str, Any]:
    """The JSON-able description saved with a detector (plus ``extra``: class_names, category_ids, ...)."""
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "config": dataclasses.asdict(config),
        "backbone_meta": unwrap(model).backbone.body_meta,
    }
    meta.update(extra)
    # Fails now, not at load time, if something is not JSON-able; and tuples become
    # lists, so this equals the meta read back from a checkpoint.
    return json.loads(json.dumps(meta))


def save_detector(path: PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Atomically write the weights as safetensors with ``meta`` in the metadata."""
    atomic_write(path, lambda tmp: write_safetensors(tmp, unwrap(model).state_dict(), meta))


def _build(meta: dict[str, Any]) -> nn.Module:
    try:
        config = DetectorConfig.from_dict(meta["config"])
        backbone_meta = meta["backbone_meta"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the detector description is incomplete ({err})") from None
    if config.norm == "syncbn":  # same tensors; SyncBatchNorm needs a process group
        config.norm = "bn"
    return build_from_config(config, backbone_meta=backbone_meta)


def _acceptable(missing: list[str], unexpected: list[str]) -> bool:
    # Detectors saved before the BoT blocks kept trainable BN under "frozen" lack only their
    # BN step counters (unused in eval); anything else missing is an error.
    return not unexpected and all(key.endswith("num_batches_tracked") for key in missing)


def load_detector(path: PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a detector from ``.safetensors``, a ``.pt`` checkpoint or a run folder.

    Returns:
        (model in eval mode, meta dict).
    """
    return load_described(path, "detector", _build, META_FORMAT, map_location, strict=_acceptable)
