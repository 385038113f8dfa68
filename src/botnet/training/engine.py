"""One training epoch for every task: the loop that turns a task's ``step`` into optimiser steps.

A task says only what one step computes (timm's task seam,
``timm/task/task.py``): ``step(batch) -> dict`` of tensors with

* ``"loss"``: the scalar to minimise, a mean over ``"count"`` items;
* ``"count"``: how many items that mean is over (the images of a
  classification batch; 1 for detection, whose losses are per-step means);
* any other entry: a **sum** over those items (e.g. ``"correct"``).

:func:`train_one_epoch` owns everything else, the same way for every task:
``model.train()``, ``zero_grad``, autocast, the micro-batches of
``accum_steps`` (DDP's ``no_sync`` on all but the last, so the gradients are
all-reduced once), backward through the fp16 grad scaler, clipping, the
optimiser and schedule step, the EMA update, one non-finite-loss policy,
the progress bar, throughput, the data-wait fraction, and the epoch's means
all-reduced over ranks (every rank returns the same numbers; torchvision's
detection engine reduces its loss dict the same way before logging).

A batch is a tuple whose first entry holds the images: a tensor (B, ...) or
a list of B tensors (detection). Micro-batch ``m`` of ``accum_steps = A``
takes items ``m, m + A, m + 2A, ...`` of every entry (interleaved, like
DistributedSampler's rank striding: one process with A micro-batches sees the
BatchNorm statistics of A processes exactly).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.console import Progress
from ..runtime.distributed import DistInfo, all_reduce_sum, unwrap
from .optim import optimizer_step

__all__ = ["EpochResult", "micro_batch", "train_one_epoch"]

Batch = Sequence[Any]
Step = Callable[[Batch], dict[str, Tensor]]


@dataclass
class EpochResult:
    """What one epoch did, the same on every rank.

    Attributes:
        means: every entry of the steps' outputs over the epoch and all
            ranks: ``"loss"`` and each sum divided by the total ``"count"``.
        images: images trained on, all ranks together.
        seconds: this rank's wall time of the epoch.
        data_wait: the share of the epoch's wall time spent waiting for the
            next batch (mean over ranks): near 0 when the input pipeline
            keeps up, near 1 when it is the bottleneck.
        steps: optimiser steps taken.
    """

    means: dict[str, float]
    images: int
    seconds: float
    data_wait: float
    steps: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def micro_batch(batch: Batch, index: int, count: int) -> Batch:
    """Items ``index, index + count, ...`` of every entry of ``batch`` (the whole batch when ``count`` is 1)."""
    if count == 1:
        return batch
    part = slice(index, None, count)
    return type(batch)(entry[part] if isinstance(entry, (Tensor, list, tuple)) else entry for entry in batch)


def _images_in(batch: Batch) -> int:
    first = batch[0]
    return int(first.shape[0]) if isinstance(first, Tensor) else len(first)


def train_one_epoch(
    model: nn.Module,
    step: Step,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    accum_steps: int = 1,
    prepare: Callable[[Batch], Batch] | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    check_every: int = 1,
    dist: DistInfo | None = None,
    progress: Progress | None = None,
    description: str = "training",
    epoch: int = 0,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> EpochResult:
    """Train ``model`` for one pass over ``loader`` (see the module docstring).

    Args:
        model: what ``step`` calls (possibly DistributedDataParallel and/or
            compiled); its trainable parameters are clipped.
        step: the task's step on one micro-batch, run under ``autocast``.
        scaler: fp16's grad scaler (None or disabled: plain backward).
        clip_grad: clip the gradient norm to this (None: no clipping).
        autocast: a factory of the autocast context (None: full precision).
        accum_steps: micro-batches per optimiser step.
        prepare: applied to each whole batch before it is split (moving it
            to the device, MixUp / CutMix, memory format).
        ema: averaged weights updated from ``model`` after every optimiser step.
        check_every: read the non-finite-loss flag every this many steps
            (reading a CUDA flag makes the host wait for the GPU: 1 on a
            CPU, about 10 on a GPU; the steps in between change nothing that
            is saved, because the epoch's checkpoint is never written).
        dist: the process group the means are all-reduced over.
        progress: a bar over the epoch's steps, updated every 10 steps.
        epoch: 0-based, for the error message.
        on_step: called after every step with that step's means (a host
            sync per step: for tests and tools, not for fast training).

    Returns:
        :class:`EpochResult`.

    Raises:
        FloatingPointError: the loss stopped being finite (one line: the
            epoch, the step or steps, the loss terms), before that step's
            optimiser update.
    """
    dist = dist or DistInfo()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, Tensor] = {}
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    images = waited = 0.0
    steps = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    model.train()
    if progress is not None:
        progress.start(description, steps or 0)
    start = time.perf_counter()
    shown = 0
    iterator = iter(loader)
    index = -1
    while True:
        before = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        waited += time.perf_counter() - before
        index += 1
        if prepare is not None:
            batch = prepare(batch)
        images += _images_in(batch)
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum_steps):
            no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel's
            sync = no_sync() if no_sync is not None and micro < accum_steps - 1 else nullcontext()
            with sync:
                with autocast() if autocast is not None else nullcontext():
                    out = step(micro_batch(batch, micro, accum_steps))
                loss = out["loss"]
                nonfinite |= ~torch.isfinite(loss.detach())
                scaled = loss if accum_steps == 1 else loss / accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            _accumulate(sums, out)
        last = steps is not None and index == steps - 1
        if (index % check_every == check_every - 1 or last) and nonfinite.item():
            raise FloatingPointError(_nonfinite_message(out, epoch, index, check_every))
        optimizer_step(optimizer, params, scheduler=scheduler, scaler=scaler, clip_grad=clip_grad)
        if ema is not None:
            ema.update_parameters(unwrap(model))
        if on_step is not None:
            on_step(_step_means(out))
        if progress is not None and progress.active and (index % 10 == 9 or last):
            elapsed = time.perf_counter() - start
            status = (f"loss {float(loss.detach()):.4f}  {images * dist.world_size / elapsed:,.0f} img/s  "
                      f"data wait {waited / elapsed:.0%}")
            progress.update(index + 1 - shown, status)
            shown = index + 1
    if progress is not None:
        progress.stop()
    if steps is None and nonfinite.item():  # a loader of unknown length: the steps after the last check
        raise FloatingPointError(_nonfinite_message(out, epoch, index, index % check_every + 1))
    seconds = time.perf_counter() - start
    return _reduce(sums, images, waited, seconds, index + 1, dist, device)


def _accumulate(sums: dict[str, Tensor], out: dict[str, Tensor]) -> None:
    """Add one micro-batch's output to the epoch's float64 sums (on the device: no host sync)."""
    with torch.no_grad():
        count = torch.as_tensor(out["count"], dtype=torch.float64, device=out["loss"].device)
        for key, value in out.items():
            if key == "count":
                continue
            value = torch.as_tensor(value).detach().double()
            if key == "loss":
                value = value * count  # the loss is a mean over `count` items; keep its sum
            sums[key] = sums[key] + value if key in sums else value
        sums["count"] = sums["count"] + count if "count" in sums else count


def _step_means(out: dict[str, Tensor]) -> dict[str, float]:
    count = float(out["count"])
    return {key: float(value.detach()) if key == "loss" else float(value.detach()) / count
            for key, value in out.items() if key != "count"}


def _nonfinite_message(out: dict[str, Tensor], epoch: int, index: int, check_every: int) -> str:
    first = index - index % check_every + 1  # 1-based: the first step since the last check
    if first == index + 1:  # every step is checked: `out` is the bad step's, name its loss terms
        terms = ", ".join(f"{key}={float(value.detach()):.4g}" for key, value in out.items() if key.startswith("loss"))
        where = f"step {index + 1} ({terms})"
    else:
        where = f"one of steps {first}-{index + 1}"
    return f"loss is not finite at epoch {epoch + 1}, {where}; lower --lr or use --clip-grad"


def _reduce(sums: dict[str, Tensor], images: float, waited: float, seconds: float, steps: int, dist: DistInfo,
            device: torch.device) -> EpochResult:
    """The epoch's means over every rank (one all-reduce of one vector)."""
    keys = [key for key in sums if key != "count"]
    vector = torch.stack([sums[key] for key in keys] + [
        sums.get("count", torch.zeros((), dtype=torch.float64, device=device)),
        torch.tensor(images, dtype=torch.float64, device=device),
        torch.tensor(waited / seconds if seconds > 0 else 0.0, dtype=torch.float64, device=device),
    ]) if keys else torch.tensor([0.0, images, waited / seconds if seconds > 0 else 0.0], dtype=torch.float64,
                                 device=device)
    all_reduce_sum(vector, dist)
    totals = vector.tolist()
    count = totals[len(keys)]
    means = {key: (total / count if count else float("nan")) for key, total in zip(keys, totals)}
    return EpochResult(means=means, images=int(totals[-2]), seconds=seconds, data_wait=totals[-1] / dist.world_size,
                       steps=steps)
