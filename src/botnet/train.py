"""The training loop: one process or many (torchrun + DistributedDataParallel).

``train(TrainConfig(...))`` builds the data, model, optimiser and schedule,
trains for ``epochs`` and after every epoch

* evaluates on the validation split (metrics summed over all ranks),
* writes ``DIR/last.pt`` (and ``DIR/best.pt`` when validation top-1
  improves) atomically: model, description, optimiser, schedule, grad
  scaler, EMA, epoch, metric history and every RNG state, as tensors and
  plain values only so ``torch.load(weights_only=True)`` reads them,
* writes the evaluated weights as ``DIR/last.safetensors`` / ``best.safetensors``,
* appends one JSON line to ``DIR/metrics.jsonl``.

``resume`` continues exactly where ``last.pt`` stopped: the sampler
order and worker seeds are functions of (seed, epoch, rank) and the global
RNG states are restored, so a run killed at any moment and resumed ends
with the same metrics as one never interrupted (on the same machine and
thread count). Only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .checkpoint import atomic_write, load_checkpoint, model_meta, save_checkpoint, save_model
from .data import DATASETS, ImageData, build_data
from .distributed import (DistInfo, all_reduce_sum, average_buffers, barrier, broadcast_object, cleanup,
                          init_distributed)
from .evaluate import EvalResult, evaluate
from .models import create_model
from .optim import OPTIMIZERS, create_optimizer, current_lr, warmup_cosine

__all__ = ["TrainConfig", "train", "RESUMABLE_OVERRIDES"]

# Settings that may change when resuming; anything else must stay as the run began.
RESUMABLE_OVERRIDES = ("epochs", "workers", "device", "progress")


@dataclass
class TrainConfig:
    """Every setting of a training run (written to ``DIR/config.json``).

    ``batch_size`` is per process: under torchrun the global batch is
    ``batch_size * world_size``; ``lr`` is used as given (no scaling).
    ``accum_steps`` splits each batch into that many micro-batches (forward
    and backward one at a time, one optimiser step), to save memory.
    """

    model: str = "botnet_mini"
    dataset: str = "digits"
    data_dir: str | None = None
    img_size: int | None = None  # None: the dataset's default (digits 32, fashion-mnist 28, folder 64)
    in_chans: int = 3  # image folders only; digits / Fashion-MNIST are grey (1)
    epochs: int = 10
    batch_size: int = 64
    accum_steps: int = 1
    opt: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1
    aug: str = "basic"
    mixup: float = 0.0
    cutmix: float = 0.0
    clip_grad: float | None = 5.0
    ema: bool = False
    ema_decay: float = 0.999
    amp: bool = False
    amp_dtype: str = "bfloat16"
    compile: bool = False
    channels_last: bool | None = None  # None: on CUDA only
    sync_bn: bool = False
    drop_rate: float = 0.0
    seed: int = 0
    deterministic: bool = False
    workers: int = 0
    device: str = "auto"
    out: str | None = None
    val_fraction: float = 0.2
    bad_images: str = "skip"
    progress: bool = True

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.opt not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.opt!r}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp dtype must be bfloat16 or float16, got {self.amp_dtype!r}")
        for name in ("epochs", "batch_size", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"batch size {self.batch_size} must be a multiple of accum_steps {self.accum_steps} (micro-batches "
                "are equal slices of each batch)"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {self.ema_decay}")


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available (this process's GPU under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} requested but CUDA is not available (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain lists (safe for weights_only loading)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    import torchvision

    from . import __version__

    return {
        "botnet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
    }


def _default_out(config: TrainConfig) -> str:
    return str(Path("runs") / f"{config.dataset}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def _mixing(config: TrainConfig, num_classes: int):
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


class _Progress:
    """A rich progress bar (rank 0 only) with loss, throughput and ETA."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.bar = None
        if enabled and Console().is_terminal:  # no live bar in logs; the epoch lines remain
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} img/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=True,
            )

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task(description, total=total, loss="-", speed="-")

    def update(self, steps: int, loss: float, speed: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=steps, loss=f"{loss:.4f}", speed=f"{speed:,.0f}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.remove_task(self.task)


def _print(info: DistInfo, message: str) -> None:
    if info.is_main:
        from rich.console import Console

        Console(highlight=False, soft_wrap=True).print(message)


def _resume_config(checkpoint: dict[str, Any], path: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's settings, with ``overrides`` of the resumable ones."""
    if "config" not in checkpoint or "optimizer" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a training checkpoint of `botnet train` (no config/optimizer)")
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in checkpoint["config"].items() if k in names})
    for name, value in overrides.items():
        if name not in names:
            raise ValueError(f"unknown setting {name!r}")
        if value == getattr(config, name) or name == "out":
            continue
        if name not in RESUMABLE_OVERRIDES:
            raise ValueError(
                f"cannot change {name} when resuming ({getattr(config, name)!r} in the checkpoint, {value!r} "
                f"given); only {', '.join(RESUMABLE_OVERRIDES)} may change"
            )
        setattr(config, name, value)
    config.out = str(path.parent)
    return config


# --------------------------------------------------------------------------- the run


class _Run:
    """State of one training run; ``fit`` is the epoch loop."""

    def __init__(self, config: TrainConfig | None, resume: str | None, overrides: dict[str, Any]) -> None:
        checkpoint = None
        if resume is not None:
            path = Path(resume)
            if path.is_dir():
                path = path / "last.pt"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"no checkpoint to resume in {resume!r} (no last.pt): the run stopped before its first "
                        "epoch ended; start it again without --resume"
                    )
            checkpoint = load_checkpoint(path)
            config = _resume_config(checkpoint, path, overrides)
        elif config is None:
            config = TrainConfig(**overrides)
        config.validate()
        self.config = config
        self.device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if config.out is None:
            config.out = _default_out(config)
        config.out = str(broadcast_object(config.out, self.dist))
        self.out = Path(config.out)
        if resume is None and (self.out / "last.pt").exists():
            raise ValueError(
                f"{str(self.out)!r} already holds a training run (last.pt); continue it with "
                f"--resume {self.out} or choose another --out"
            )
        barrier(self.dist)

        seed_everything(config.seed + self.dist.rank)
        self.data: ImageData = build_data(
            config.dataset, config.data_dir, config.img_size, config.aug, config.bad_images,
            config.val_fraction, config.seed, config.in_chans,
        )
        self._build_loaders()
        self._build_model()
        self.start_epoch, self.history, self.best_acc, self.best_epoch = 0, [], -1.0, 0
        if checkpoint is not None:
            self._restore(checkpoint)

    # ---------------------------------------------------------------- set-up

    def _build_loaders(self) -> None:
        config, data, info = self.config, self.data, self.dist
        # One sampler code path for 1 or N processes: the order is a function of (seed, epoch) only,
        # so a 2-process run sees the same global batches as a 1-process run with twice the batch.
        self.sampler = DistributedSampler(
            data.train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed
        )
        self.loader_generator = torch.Generator()
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(
            data.train, batch_size=config.batch_size, sampler=self.sampler, num_workers=config.workers,
            drop_last=True, pin_memory=pin, generator=self.loader_generator,
        )
        if len(self.train_loader) == 0:
            raise ValueError(
                f"batch size {config.batch_size} x {info.world_size} process(es) is larger than the training "
                f"set ({len(data.train)} images); lower --batch-size"
            )
        val_shard = Subset(data.val, range(info.rank, len(data.val), info.world_size))  # no padding duplicates
        self.val_loader = DataLoader(
            val_shard, batch_size=max(config.batch_size, 128), shuffle=False, num_workers=config.workers,
            pin_memory=pin,
        )

    def _build_model(self) -> None:
        config, device = self.config, self.device
        self.model = create_model(
            config.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans, drop_rate=config.drop_rate
        )
        if config.sync_bn and self.dist.enabled:
            if device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on CPU")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.optimizer = create_optimizer(self.model, config.opt, config.lr, config.weight_decay, config.momentum)
        steps = len(self.train_loader)
        self.scheduler = warmup_cosine(
            self.optimizer, config.epochs * steps, round(config.warmup_epochs * steps), config.min_lr_ratio
        )
        self.amp_dtype = getattr(torch, config.amp_dtype) if config.amp else None
        if self.amp_dtype is torch.float16 and device.type == "cpu":
            _print(self.dist, "[yellow]note[/]: float16 autocast on a CPU is emulated and slow; bfloat16 is not")
        if self.amp_dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.mixing = _mixing(config, self.data.num_classes)

        net: nn.Module = self.model
        if config.compile:
            net = torch.compile(net)
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = net
        self.ema = None
        if config.ema:  # after DDP, which gave every rank rank 0's initial weights
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.start_epoch = int(checkpoint["epoch"])
        self.history = list(checkpoint["history"])
        self.best_acc, self.best_epoch = float(checkpoint["best_acc"]), int(checkpoint["best_epoch"])
        self.restored_rng = checkpoint["rng"][self.dist.rank] if self.dist.rank < len(checkpoint["rng"]) else None
        if self.restored_rng is None:
            raise ValueError(
                f"the checkpoint holds RNG states of {len(checkpoint['rng'])} process(es); resume it with as many"
            )

    # ---------------------------------------------------------------- epochs

    def _train_epoch(self, epoch: int, progress: _Progress) -> dict[str, float]:
        config, device = self.config, self.device
        self.net.train()
        self.sampler.set_epoch(epoch)
        # Worker seeds (augmentation in workers) depend on (seed, epoch, rank) only.
        self.loader_generator.manual_seed(config.seed * 1_000_003 + epoch * 1009 + self.dist.rank)
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        autocast = torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        progress.start(f"epoch {epoch + 1}/{config.epochs}", len(self.train_loader))
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
                sync = self.net.no_sync() if self.dist.enabled and micro < accum - 1 else nullcontext()
                with sync:
                    with autocast:
                        logits = self.net(images[part])
                        loss = self.criterion(logits, targets[part])
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower --lr or use "
                            "--clip-grad"
                        )
                    self.scaler.scale(loss / accum).backward()
                with torch.no_grad():
                    batch = logits.shape[0]
                    totals[0] += loss.detach().double() * batch
                    totals[1] += (logits.argmax(dim=1) == labels[part]).sum()
                    totals[2] += batch
            if config.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if progress.bar is not None and (step % 10 == 9 or step == len(self.train_loader) - 1):
                seen = (step + 1) * config.batch_size * self.dist.world_size
                progress.update(step + 1 - shown, loss.item(), seen / (time.perf_counter() - start))
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
            dist_info=self.dist,
        )

    def _meta(self) -> dict[str, Any]:
        data = self.data
        return model_meta(
            self.model, class_names=data.class_names, img_size=list(data.img_size), mean=list(data.mean),
            std=list(data.std), dataset=data.info.get("dataset"),
            # How image folders were split, so `botnet eval` rebuilds the same validation images.
            split={"seed": self.config.seed, "val_fraction": self.config.val_fraction},
        )

    def _gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (rank order), for rank 0 to save."""
        state = rng_state()
        if not self.dist.enabled:
            return [state]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def _save(self, epoch: int, eval_model: nn.Module, improved: bool) -> None:
        rng = self._gather_rng()
        if not self.dist.is_main:
            return
        meta = self._meta()
        # "model": the weights whose val_acc is reported (the EMA's with --ema); the raw
        # training weights go under "train_model" for resuming.
        evaluated = {k: v.detach().cpu() for k, v in self._eval_state(eval_model).items()}
        checkpoint: dict[str, Any] = {
            "model": evaluated,
            "meta": meta,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epoch + 1,
            "history": self.history,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "rng": rng,
            "config": dataclasses.asdict(self.config),
        }
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
            checkpoint["train_model"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        extra = {k: v for k, v in meta.items() if k not in ("format", "version", "model", "spec")}
        # best first: a crash between the two leaves last.pt at the previous epoch, which resumes
        # into the same best again.
        if improved:
            save_checkpoint(self.out / "best.pt", checkpoint)
            self._save_safetensors(self.out / "best.safetensors", eval_model, extra)
        save_checkpoint(self.out / "last.pt", checkpoint)
        self._save_safetensors(self.out / "last.safetensors", eval_model, extra)

    def _eval_state(self, eval_model: nn.Module) -> dict[str, torch.Tensor]:
        return eval_model.module.state_dict() if eval_model is self.ema else eval_model.state_dict()

    def _save_safetensors(self, path: Path, eval_model: nn.Module, extra: dict[str, Any]) -> None:
        save_model(path, eval_model.module if eval_model is self.ema else eval_model, **extra)

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        atomic_write(self.out / "metrics.jsonl", lambda tmp: tmp.write_text(lines))

    def _write_config(self) -> None:
        payload = {
            "settings": dataclasses.asdict(self.config),
            "world_size": self.dist.world_size,
            "backend": self.dist.backend,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "data": self.data.info | {"class_names": self.data.class_names, "img_size": list(self.data.img_size),
                                      "mean": list(self.data.mean), "std": list(self.data.std)},
            "model_params": sum(p.numel() for p in self.model.parameters()),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from_epoch": self.start_epoch if self.start_epoch else None,
        }
        text = json.dumps(payload, indent=2) + "\n"
        atomic_write(self.out / "config.json", lambda tmp: tmp.write_text(text))

    def fit(self) -> dict[str, Any]:
        config, info = self.config, self.dist
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self._write_metrics()  # on resume: exactly the history of last.pt
            skipped = self.data.info.get("skipped_images") or []
            for item in skipped:
                _print(info, f"[yellow]skipped unreadable image[/] {item['path']}: {item['reason']}")
        params = sum(p.numel() for p in self.model.parameters())
        _print(
            info,
            f"[bold]botnet train[/] {config.model} ({params / 1e6:.2f}M params) on {config.dataset} "
            f"{self.data.img_size[0]}x{self.data.img_size[1]}: {len(self.data.train)} train / {len(self.data.val)} "
            f"val images, {info.world_size} process(es) on {self.device}, batch {config.batch_size}"
            f"x{info.world_size}, {config.epochs} epochs -> {self.out}"
            + (f" (resuming after epoch {self.start_epoch})" if self.start_epoch else ""),
        )
        if self.start_epoch:
            set_rng_state(self.restored_rng)
        elapsed = self.history[-1]["elapsed_seconds"] if self.history else 0.0
        with _Progress(info.is_main and config.progress) as progress:
            for epoch in range(self.start_epoch, config.epochs):
                start = time.perf_counter()
                record: dict[str, Any] = {"epoch": epoch + 1}
                record.update(self._train_epoch(epoch, progress))
                record["lr"] = current_lr(self.optimizer)
                result = self._evaluate(self.model)
                eval_model: nn.Module = self.model
                if self.ema is not None:
                    record.update(raw_val_loss=result.loss, raw_val_acc=result.top1)
                    result = self._evaluate(self.ema)
                    eval_model = self.ema
                record.update(val_loss=result.loss, val_acc=result.top1, val_top5=result.top5)
                improved = result.top1 > self.best_acc
                if improved:
                    self.best_acc, self.best_epoch = result.top1, epoch + 1
                record["epoch_seconds"] = time.perf_counter() - start
                elapsed += record["epoch_seconds"]
                record["elapsed_seconds"] = elapsed
                self.history.append(record)
                self._save(epoch, eval_model, improved)  # checkpoint first: it carries the history
                if info.is_main:
                    with open(self.out / "metrics.jsonl", "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                train_acc = "" if record["train_acc"] is None else f" acc {record['train_acc']:.4f}"
                _print(
                    info,
                    f"epoch {epoch + 1:>3}/{config.epochs}  train loss {record['train_loss']:.4f}{train_acc}  "
                    f"val loss {record['val_loss']:.4f} top-1 {record['val_acc']:.4f} top-5 {record['val_top5']:.4f}  "
                    f"lr {record['lr']:.2e}  {record['train_images_per_second']:,.0f} img/s  "
                    f"{record['epoch_seconds']:.1f}s" + ("  [green]best[/]" if improved else ""),
                )
        barrier(info)
        summary = {
            "out": str(self.out),
            "epochs": config.epochs,
            "best_val_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "final_val_acc": self.history[-1]["val_acc"] if self.history else None,
            "elapsed_seconds": elapsed,
        }
        _print(
            info,
            f"[bold]done[/]: best val top-1 {self.best_acc:.4f} (epoch {self.best_epoch}), final "
            f"{summary['final_val_acc']:.4f}, {elapsed:.0f}s training; checkpoints in {self.out}",
        )
        return summary


def train(config: TrainConfig | None = None, resume: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Train a run, or continue one.

    Args:
        config: all settings (default: ``TrainConfig(**overrides)``).
        resume: a run directory (or its ``last.pt``) to continue; its saved
            settings are used, and ``overrides`` may change only
            :data:`RESUMABLE_OVERRIDES` (e.g. more ``epochs``).

    Returns:
        summary: out dir, best / final validation top-1, training seconds.
    """
    run = _Run(config, resume, overrides)
    try:
        return run.fit()
    finally:
        cleanup(run.dist)
