"""Training classifiers: one process or many (torchrun + DistributedDataParallel).

``train(TrainConfig(...))`` builds the data, model, optimiser and schedule,
trains for ``epochs`` and after every epoch evaluates on the validation
split (metrics summed over all ranks) and commits the run directory's files
(see :mod:`botnet.training.rundir`): ``last.pt`` / ``best.pt`` (model,
description, optimiser, schedule, grad scaler, EMA, epoch, history, every
RNG state, as tensors and plain values that ``torch.load(weights_only=True)``
reads), the evaluated weights as ``last.safetensors`` / ``best.safetensors``,
and ``metrics.jsonl``.

``train(resume=DIR)`` continues exactly where ``DIR/last.pt`` stopped (see
:class:`botnet.training.Trainer`). Only rank 0 writes files and prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..checkpoint import model_meta, write_safetensors
from ..models import create_model
from ..training.config import RunConfig, choice, fraction, nonneg_float, positive_int, setting
from ..training.console import Progress
from ..training.distributed import all_reduce_sum, average_buffers
from ..training.rng import epoch_seed
from ..training.trainer import Trainer
from .data import DATASETS, BatchedLoader, ImageData, build_data
from .evaluate import EvalResult, evaluate

__all__ = ["TrainConfig", "ClassificationTrainer", "train", "RESUMABLE_OVERRIDES"]

RESUMABLE_OVERRIDES = RunConfig.RESUMABLE


@dataclass
class TrainConfig(RunConfig):
    """Every setting of a classification run (written to ``DIR/config.json``).

    The shared settings (recipe, precision, run) are :class:`RunConfig`'s.
    ``accum_steps`` splits each batch into that many interleaved
    micro-batches (forward and backward one at a time, one optimiser step),
    to save memory.
    """

    model: str = setting("botnet_mini", "registered model name (see `botnet info --list`)", group="data and model")
    dataset: str = setting("digits", "digits (built in), fashion-mnist (Debian's dataset-fashion-mnist) or folder",
                           choice(*DATASETS), group="data and model")
    data_dir: str | None = setting(None, "Fashion-MNIST IDX directory (default /usr/share/datasets/fashion-mnist) "
                                   "or an ImageFolder root (class sub-directories, or train/ and val/)",
                                   group="data and model")
    img_size: int | None = setting(None, "input side in px (default: digits 32, fashion-mnist 28, folder 64)",
                                   positive_int, group="data and model")
    in_chans: int = setting(3, "image folders: read as grey (1) or RGB (3)", choice(1, 3), group="data and model")
    val_fraction: float = setting(0.2, "folders without val/: held-out share",
                                  fraction(0, 1, low_open=True), group="data and model")
    bad_images: str = setting("skip", "folders: unreadable images are reported and left out before training "
                              "(skip), or stop the run (error)", choice("skip", "error"), group="data and model")
    drop_rate: float = setting(0.0, "dropout before the classifier", fraction(0, 1), group="data and model")
    model_kwargs: dict[str, Any] = setting({}, "model options (ModelSpec fields) as key=value, e.g. pos_emb=absolute "
                                           "heads=8", group="data and model")
    accum_steps: int = setting(1, "split each batch into N interleaved micro-batches (less memory; one optimiser "
                               "step)", positive_int, group="recipe")
    label_smoothing: float = setting(0.1, "label smoothing", fraction(0, 1), group="recipe")
    aug: str = setting("basic", "augmentation", choice("none", "basic", "randaugment"), group="recipe")
    mixup: float = setting(0.0, "MixUp alpha (0: off)", nonneg_float, group="recipe")
    cutmix: float = setting(0.0, "CutMix alpha (0: off)", nonneg_float, group="recipe")
    ema: bool = setting(False, "keep an EMA of the weights (and BN statistics); it is evaluated and saved",
                        group="recipe")
    ema_decay: float = setting(0.999, "EMA decay per step", fraction(0, 1, low_open=True), group="recipe")
    reprob: float = setting(0.0, "random-erasing probability (timm's --reprob)", fraction(0, 1, high_open=False),
                            group="recipe")
    tta_flip: bool = setting(False, "validate with the mean logits of each image and its mirror image (test-time "
                             "augmentation; not for digits)", group="recipe")
    channels_last: bool | None = setting(None, "channels_last memory format (default: on CUDA only)")
    sync_bn: bool = setting(False, "SyncBatchNorm under torchrun (CUDA only)")

    def validate(self) -> None:
        super().validate()
        if self.tta_flip and self.dataset == "digits":
            raise ValueError("--tta-flip mirrors images, which changes what a digit is; not for --dataset digits")
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a multiple of --accum-steps {self.accum_steps} "
                "(micro-batches are equal slices of each batch)"
            )


def _mixing(config: TrainConfig, num_classes: int) -> nn.Module | None:
    """MixUp / CutMix on whole batches (torchvision v2), or None."""
    from torchvision.transforms import v2

    choices = []
    if config.mixup > 0:
        choices.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        choices.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


class ClassificationTrainer(Trainer):
    """:class:`~botnet.training.Trainer` for image classification (score: validation top-1)."""

    config_class = TrainConfig
    task = "classification"
    score_key = "val_acc"
    config: TrainConfig

    def default_out(self) -> str:
        config = self.config
        return str(Path("runs") / f"{config.dataset}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")

    # ------------------------------------------------------------------ set-up

    def build(self) -> None:
        config, info = self.config, self.dist
        self.data: ImageData = build_data(
            config.dataset, config.data_dir, config.img_size, config.aug, config.bad_images,
            config.val_fraction, config.seed, config.in_chans, workers=config.workers, reprob=config.reprob,
        )
        # One sampler code path for 1 or N processes: the order is a function of (seed, epoch) only,
        # so a 2-process run sees the same global batches as a 1-process run with twice the batch.
        self.sampler = DistributedSampler(
            self.data.train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed
        )
        self.loader_generator = torch.Generator()
        pin = self.device.type == "cuda"
        if self.data.batch_augment is not None:  # in memory: whole batches, augmented with tensor ops
            self.train_loader: Any = BatchedLoader(
                self.data.train, self.sampler, config.batch_size, self.data.batch_augment, self.data.mean,
                self.data.std, self.loader_generator,
            )
        else:
            self.train_loader = DataLoader(
                self.data.train, batch_size=config.batch_size, sampler=self.sampler, num_workers=config.workers,
                drop_last=True, pin_memory=pin, generator=self.loader_generator,
            )
        if len(self.train_loader) == 0:
            raise ValueError(
                f"batch size {config.batch_size} x {info.world_size} process(es) is larger than the training "
                f"set ({len(self.data.train)} images); lower --batch-size"
            )
        self.steps_per_epoch = len(self.train_loader)
        val_shard = Subset(self.data.val, range(info.rank, len(self.data.val), info.world_size))  # no duplicates
        self.val_loader = DataLoader(
            val_shard, batch_size=max(config.batch_size, 128), shuffle=False, num_workers=config.workers,
            pin_memory=pin,
        )
        model = create_model(
            config.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans, drop_rate=config.drop_rate,
            **config.model_kwargs,
        )
        if config.sync_bn and info.enabled:
            if self.device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.channels_last = self.device.type == "cuda" if config.channels_last is None else config.channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.mixing = _mixing(config, self.data.num_classes)
        self.ema = None

    def wrap(self, model: nn.Module) -> nn.Module:
        net = super().wrap(model)
        if self.config.ema:  # after DDP, which gave every rank rank 0's initial weights
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay), use_buffers=True)
        return net

    # ------------------------------------------------------------------ state

    def eval_model(self) -> nn.Module:
        """The weights whose validation accuracy is reported (the EMA's with --ema)."""
        return self.ema.module if self.ema is not None else self.model

    def eval_state(self) -> dict[str, torch.Tensor]:
        return self.eval_model().state_dict()

    def extra_state(self) -> dict[str, Any]:
        if self.ema is None:
            return {}
        # "model" holds the evaluated (EMA) weights; the raw training weights go here for resuming.
        return {"ema": self.ema.state_dict(),
                "train_model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def load_extra_state(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])

    def meta(self) -> dict[str, Any]:
        data = self.data
        return model_meta(
            self.model, class_names=data.class_names, img_size=list(data.img_size), mean=list(data.mean),
            std=list(data.std), dataset=data.info.get("dataset"), tta_flip=self.config.tta_flip,
            # How image folders were split, so `botnet eval` rebuilds the same validation images.
            split={"seed": self.config.seed, "val_fraction": self.config.val_fraction},
        )

    def write_weights(self, path: Path, meta: dict[str, Any]) -> None:
        write_safetensors(path, self.eval_state(), meta)

    def data_info(self) -> dict[str, Any]:
        data = self.data
        return data.info | {"class_names": data.class_names, "img_size": list(data.img_size),
                            "mean": list(data.mean), "std": list(data.std)}

    # ------------------------------------------------------------------ epochs

    def train_one_epoch(self, epoch: int, progress: Progress) -> dict[str, Any]:
        config, device = self.config, self.device
        self.net.train()
        self.sampler.set_epoch(epoch)
        # Worker seeds (augmentation in workers) depend on (seed, epoch, rank) only.
        self.loader_generator.manual_seed(epoch_seed(config.seed, epoch, self.dist.rank))
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        # A non-finite loss stops the run. Reading a CUDA flag makes the host wait for the GPU, which
        # ends the overlap of Python dispatch and GPU work, so there it is read every 10 steps (the
        # optimiser steps in between change nothing saved: the epoch's checkpoint is never written).
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        check_every = 1 if device.type == "cpu" else 10
        progress.start(f"epoch {epoch + 1}/{config.epochs}", self.steps_per_epoch)
        shown, start = 0, time.perf_counter()
        for step, (images, labels) in enumerate(self.train_loader):
            targets = labels
            if self.mixing is not None:
                images, targets = self.mixing(images, labels)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            accum = config.accum_steps
            for micro in range(accum):
                # Interleaved micro-batches, like DistributedSampler's rank striding: one process
                # with accum_steps=N sees the BatchNorm statistics of N processes exactly.
                part = slice(micro, None, accum)
                # DDP: all-reduce the gradients once, on the last micro-batch.
                sync = self.net.no_sync() if self.dist.enabled and micro < accum - 1 else _null()
                with sync:
                    with self.autocast():
                        logits = self.net(images[part])
                        loss = self.criterion(logits, targets[part])
                    nonfinite |= ~torch.isfinite(loss.detach())
                    self.scaler.scale(loss / accum).backward()
                with torch.no_grad():
                    batch = logits.shape[0]
                    totals[0] += loss.detach().double() * batch
                    totals[1] += (logits.argmax(dim=1) == labels[part]).sum()
                    totals[2] += batch
            if (step % check_every == check_every - 1 or step == self.steps_per_epoch - 1) and nonfinite.item():
                first = step - step % check_every + 1  # 1-based: the first step since the last check
                where = f"step {step + 1}" if first == step + 1 else f"one of steps {first}-{step + 1}"
                raise FloatingPointError(
                    f"loss is not finite at epoch {epoch + 1}, {where}; lower --lr or use --clip-grad"
                )
            self.optimizer_step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if progress.active and (step % 10 == 9 or step == self.steps_per_epoch - 1):
                seen = (step + 1) * config.batch_size * self.dist.world_size
                speed = seen / (time.perf_counter() - start)
                progress.update(step + 1 - shown, f"loss {loss.item():.4f}  {speed:,.0f} img/s")
                shown = step + 1
        progress.stop()
        seconds = time.perf_counter() - start
        all_reduce_sum(totals, self.dist)
        count = totals[2].item()
        return {
            "train_loss": float(totals[0] / count),
            # With MixUp/CutMix the hard label is only one of two; accuracy against it means little.
            "train_acc": None if self.mixing is not None else float(totals[1] / count),
            "train_images_per_second": count / seconds,
        }

    def _evaluate(self, model: nn.Module) -> EvalResult:
        average_buffers(model, self.dist)  # one model on every rank: the one rank 0 saves
        return evaluate(
            model, self.val_loader, self.device, self.data.num_classes, self.amp_dtype, self.channels_last,
            dist_info=self.dist, tta_flip=self.config.tta_flip,
        )

    def evaluate(self, epoch: int, progress: Progress) -> dict[str, Any]:
        record: dict[str, Any] = {}
        result = self._evaluate(self.model)
        if self.ema is not None:
            record.update(raw_val_loss=result.loss, raw_val_acc=result.top1)
            result = self._evaluate(self.ema.module)
        record.update(val_loss=result.loss, val_acc=result.top1, val_top5=result.top5)
        return record

    # ------------------------------------------------------------------ printing

    def describe(self) -> str:
        config, data, info = self.config, self.data, self.dist
        params = sum(p.numel() for p in self.model.parameters())
        lines = [
            f"[yellow]skipped unreadable image[/] {item['path']}: {item['reason']}"
            for item in data.info.get("skipped_images") or []
        ]
        lines.append(
            f"[bold]botnet train[/] {config.model} ({params / 1e6:.2f}M params) on {config.dataset} "
            f"{data.img_size[0]}x{data.img_size[1]}: {len(data.train)} train / {len(data.val)} val images, "
            f"{info.world_size} process(es) on {self.device}, batch {config.batch_size}x{info.world_size}, "
            f"{config.epochs} epochs -> {self.run.path}"
        )
        return "\n".join(lines)

    def epoch_line(self, record: dict[str, Any]) -> str:
        train_acc = "" if record["train_acc"] is None else f" acc {record['train_acc']:.4f}"
        # With --ema the EMA is evaluated and saved; the raw weights' top-1 beside it shows when the
        # average lags or its averaged BN statistics do not fit (docs/TRAINING.md).
        raw = f" (raw {record['raw_val_acc']:.4f})" if "raw_val_acc" in record else ""
        return (
            f"epoch {record['epoch']:>3}/{self.config.epochs}  train loss {record['train_loss']:.4f}{train_acc}  "
            f"val loss {record['val_loss']:.4f} top-1 {record['val_acc']:.4f}{raw} top-5 {record['val_top5']:.4f}  "
            f"lr {record['lr']:.2e}  {record['train_images_per_second']:,.0f} img/s  {record['epoch_seconds']:.1f}s"
        )

    def fit(self) -> dict[str, Any]:
        summary = super().fit()
        final = summary["final"]
        summary.update(best_val_acc=summary["best_score"], final_val_acc=final.get("val_acc"))
        if self.dist.is_main:
            from ..training.console import say

            say(f"[bold]done[/]: best val top-1 {summary['best_val_acc']:.4f} (epoch {summary['best_epoch']}), "
                f"final {summary['final_val_acc']:.4f}, {summary['elapsed_seconds']:.0f}s training; checkpoints "
                f"in {summary['out']}")
        return summary


def _null() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def train(config: TrainConfig | None = None, resume: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Train a classifier, or continue a run.

    Args:
        config: all settings (default: ``TrainConfig(**overrides)``).
        resume: a run directory (or its ``last.pt``) to continue; its saved
            settings are used, and ``overrides`` may change only
            :attr:`TrainConfig.RESUMABLE` (e.g. more ``epochs``).

    Returns:
        summary: out dir, best / final validation top-1, training seconds.
    """
    return ClassificationTrainer(config, resume, **overrides).fit()
