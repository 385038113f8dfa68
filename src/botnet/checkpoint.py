"""Saving and loading models safely: atomic writes, no unpickling of code.

Two files describe a trained model:

* ``*.safetensors``: the weights, with the model description (JSON) in the
  safetensors metadata under ``"botnet"``;
* ``*.pt``: a training checkpoint, a dict of tensors and plain Python values
  with at least ``"model"`` (state dict) and ``"meta"`` (the same
  description), read with ``torch.load(weights_only=True)``.

The description ("meta") is a JSON-able dict: ``model`` (registry name),
``spec`` (every :class:`ModelSpec` field), and optionally ``class_names``,
``img_size`` [H, W], ``mean``, ``std``. :func:`load_model` rebuilds the model
from either file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models.network import BoTNet, build_model
from .models.spec import ModelSpec, StageSpec

__all__ = ["atomic_write", "model_meta", "model_from_meta", "resolve_checkpoint_path", "read_weights_and_meta", "save_model", "save_checkpoint", "load_checkpoint", "load_model"]

PathLike = str | os.PathLike[str]


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Write a file so that ``path`` only ever holds a complete version.

    ``write`` fills a temporary file in the same directory, which is flushed,
    fsynced and renamed over ``path`` (atomic on POSIX); a crash leaves the
    previous file intact and at worst a stray ``.tmp`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def model_meta(model: BoTNet, **extra: Any) -> dict[str, Any]:
    """The JSON-able description that rebuilds ``model`` (plus ``extra`` keys)."""
    spec = dataclasses.asdict(model.spec)
    spec["num_classes"] = model.num_classes
    meta = {"format": "botnet", "version": 1, "model": model.name, "spec": spec}
    meta.update(extra)
    json.dumps(meta)  # fail now, not at load time, if something is not JSON-able
    return meta


def model_from_meta(meta: dict[str, Any]) -> BoTNet:
    """A freshly initialised model from a :func:`model_meta` description."""
    spec_dict = dict(meta["spec"])
    spec_dict["stages"] = tuple(StageSpec(**stage) for stage in spec_dict["stages"])
    if isinstance(spec_dict.get("ref_img_size"), list):
        spec_dict["ref_img_size"] = tuple(spec_dict["ref_img_size"])
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    return build_model(ModelSpec(**{k: v for k, v in spec_dict.items() if k in known}), name=meta["model"])


def save_model(path: PathLike, model: BoTNet, **extra: Any) -> None:
    """Write the weights as safetensors with the description in its metadata (atomically)."""
    from safetensors.torch import save_file

    meta = model_meta(model, **extra)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"botnet": json.dumps(meta)}))


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a checkpoint dict (tensors and plain values only)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a ``.pt`` checkpoint with ``weights_only=True``.

    A file that needs pickled code or objects is refused with a ValueError
    that says so, instead of being executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"refusing to load {str(path)!r}: it is not a plain tensor checkpoint (loading it would "
            f"unpickle arbitrary objects or code). Detail: {first_line}"
        ) from None


def resolve_checkpoint_path(path: PathLike) -> Path:
    """``path`` itself, or for a run directory its best/last .safetensors or .pt file."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in ("best.safetensors", "last.safetensors", "best.pt", "last.pt"):
        if (path / candidate).is_file():
            return path / candidate
    raise FileNotFoundError(f"no best/last .safetensors or .pt checkpoint in directory {str(path)!r}")


def read_weights_and_meta(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, description) from a ``.safetensors`` file or a ``.pt`` checkpoint, never unpickling."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        if not path.is_file():
            raise FileNotFoundError(f"no weights file at {str(path)!r}")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        if "botnet" not in metadata:
            raise ValueError(f"{str(path)!r} has no botnet model description in its metadata")
        return state, json.loads(metadata["botnet"])
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "meta" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a botnet checkpoint (needs 'model' and 'meta' entries)")
    return checkpoint["model"], checkpoint["meta"]


def load_model(path: PathLike, map_location: str | torch.device = "cpu") -> tuple[BoTNet, dict[str, Any]]:
    """Rebuild a model and its description from ``.safetensors``, a ``.pt`` checkpoint or a run directory.

    Returns:
        (model in eval mode, meta dict).
    """
    state, meta = read_weights_and_meta(resolve_checkpoint_path(path))
    model: nn.Module = model_from_meta(meta)
    model.load_state_dict(state)
    return model.to(map_location).eval(), meta
