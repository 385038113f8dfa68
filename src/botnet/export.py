"""Export a model for deployment: ONNX, TorchScript (traced) or a torch.export program.

All three take any batch size and any image size of at least the network's
stride, not just the size they were exported at:

* ``onnx``: the dynamo-based ``torch.onnx.export`` (opset >= 17, default 18)
  with dynamic ``batch``, ``height`` and ``width`` axes on the input
  ``images`` (N, C, H, W); the output is ``logits`` (N, num_classes). The
  model description (class names, mean/std, ...) is stored as JSON in the
  ONNX metadata under ``"botnet"``.
* ``exported``: a :func:`torch.export.export` program (``.pt2``) with
  dynamic batch, height and width; load it with ``torch.export.load(path)
  .module()``. It accepts H, W from the network's stride + 1 (33 px for
  botnet50, 9 for botnet_tiny): at exactly the stride the c5 map is 1x1 and
  PyTorch's convolution shape rules take another path that the program does
  not record.
* ``torchscript``: :func:`torch.jit.trace`. Sizes are recorded as tensor
  operations, so the traced model is correct at other batch and image sizes
  (tested), but Python-side input checks are frozen: a traced model does not
  raise botnet's clear errors for a wrong channel count or a too-small image.
  It is specialised to the dtype and device it was traced with (float32,
  CPU). torch.jit is deprecated in PyTorch; prefer ``exported``.

Why not the legacy ONNX exporter: it traces like TorchScript and is
deprecated; the dynamo exporter records the symbolic sizes directly.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import model_meta
from .runtime.store import atomic_write
from .models.network import BoTNet

__all__ = [
    "FORMATS",
    "DEFAULT_OPSET",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "export_program",
    "load_exported",
    "check_sizes",
    "compare_exported",
]

FORMATS = ("onnx", "torchscript", "exported")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2"}
DEFAULT_OPSET = 18
MIN_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"
CHECK_BATCH = 3

PathLike = str | os.PathLike[str]


def example_input(model: BoTNet, img_size: tuple[int, int] | None = None, batch: int = 2) -> Tensor:
    """A random (batch, in_chans, H, W) input; H, W default to the model's reference size.

    A batch of 2 keeps the exporters from treating the batch as the special size 1.
    """
    height, width = img_size or model.spec.ref_img_size
    smallest = model.min_input_size + 1
    if height < smallest or width < smallest:
        raise ValueError(f"export size {height}x{width} is too small for {model.name}: use at least {smallest} px")
    return torch.randn(batch, model.in_chans, height, width)


def _meta_json(model: BoTNet, meta: dict[str, Any] | None) -> str:
    meta = dict(meta) if meta is not None else model_meta(model)
    meta["input"] = {"name": INPUT_NAME, "layout": "NCHW", "channels": model.in_chans,
                     "min_size": model.min_input_size, "dtype": "float32"}
    return json.dumps(meta)


def export_onnx(
    model: BoTNet,
    path: PathLike,
    *,
    img_size: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` as ONNX with dynamic batch, height and width (see the module doc)."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    model = model.eval()
    dims = {0: "batch", 2: "height", 3: "width"}
    program = torch.onnx.export(
        model, (example_input(model, img_size),), dynamo=True, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=(dims,), verbose=False,
    )
    program.model.metadata_props["botnet"] = _meta_json(model, meta)
    atomic_write(path, lambda tmp: program.save(tmp))


def export_program(model: BoTNet, *, img_size: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` program of the eval-mode model with dynamic batch, height and width."""
    from torch.export import Dim

    model = model.eval()
    smallest = model.min_input_size + 1
    dims = {0: Dim("batch", min=1), 2: Dim("height", min=smallest), 3: Dim("width", min=smallest)}
    # Some shape guards (e.g. ceil-mode pooling's "the last window starts
    # inside the input") hold for every size but cannot be proven
    # symbolically; checking them at run time keeps the sizes dynamic.
    return torch.export.export(
        model, (example_input(model, img_size),), dynamic_shapes=(dims,),
        prefer_deferred_runtime_asserts_over_guards=True,
    )


def _save_program(model: BoTNet, path: PathLike, img_size: tuple[int, int] | None, meta: dict[str, Any] | None) -> None:
    program = export_program(model, img_size=img_size)
    extra = {"botnet.json": _meta_json(model, meta)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a buffer: torch.export insists on a .pt2 suffix for paths
            torch.export.save(program, handle, extra_files=extra)

    atomic_write(path, write)


def export_torchscript(
    model: BoTNet, path: PathLike, *, img_size: tuple[int, int] | None = None, meta: dict[str, Any] | None = None
) -> None:
    """Write a traced TorchScript model (see the module doc for what tracing fixes)."""
    model = model.eval()
    with warnings.catch_warnings():
        # Tracing warns about every Python-side check (input validation) and
        # that torch.jit is deprecated; both are documented above.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        traced = torch.jit.trace(model, example_input(model, img_size))
        extra = {"botnet.json": _meta_json(model, meta)}


        def write(tmp: Path) -> None:
            # A file object, not a path: given a path, torch.jit.save's C++ writer aborts the whole process
            # on a full disk; through a file object the OSError comes back (a one-line WriteError).
            with open(tmp, "wb") as handle:
                torch.jit.save(traced, handle, _extra_files=extra)

        atomic_write(path, write)


def export_model(
    model: BoTNet,
    path: PathLike,
    format: str,
    *,
    img_size: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` to ``path`` in ``format`` (one of :data:`FORMATS`); returns the path."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if format == "onnx":
        export_onnx(model, path, img_size=img_size, opset=opset, meta=meta)
    elif format == "exported":
        _save_program(model, path, img_size, meta)
    else:
        export_torchscript(model, path, img_size=img_size, meta=meta)
    return path


def load_exported(path: PathLike, format: str) -> Callable[[Tensor], Tensor]:
    """A function (N, C, H, W) float32 tensor -> (N, num_classes) logits tensor, for any exported file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path!r}")
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run_onnx(x: Tensor) -> Tensor:
            return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})[0])

        return run_onnx
    if format == "exported":
        with open(path, "rb") as handle:
            return torch.export.load(handle).module()
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
            return torch.jit.load(path, map_location="cpu")
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}")


def check_sizes(model: BoTNet, img_size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Two image sizes other than the export size (one not a multiple of the stride, not square)."""
    height, width = img_size or model.spec.ref_img_size
    stride, smallest = model.min_input_size, model.min_input_size + 1
    return [
        (height + stride, width + stride),
        (max(smallest, height - stride // 2 + 1), max(smallest, width + stride // 2 + 3)),
    ]


@torch.no_grad()
def compare_exported(
    model: BoTNet, path: PathLike, format: str, sizes: Sequence[tuple[int, int]], batch: int = CHECK_BATCH
) -> list[dict[str, Any]]:
    """Run the exported file and ``model`` on the same random inputs at each (H, W).

    Returns:
        One dict per size: ``size``, ``max_abs_diff`` (logits), ``max_abs_logit``
        (the scale to judge the difference against).
    """
    model = model.eval()
    run = load_exported(path, format)
    generator = torch.Generator().manual_seed(0)
    results = []
    for height, width in sizes:
        x = torch.randn(batch, model.in_chans, height, width, generator=generator)
        expected = model(x)
        results.append({
            "size": (height, width),
            "max_abs_diff": (run(x) - expected).abs().max().item(),
            "max_abs_logit": expected.abs().max().item(),
        })
    return results
