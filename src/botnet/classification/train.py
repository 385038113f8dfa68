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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ..checkpoint import model_meta
from ..models import BoTNet, create_model
from ..models.freeze import MAX_TRAINABLE_LAYERS, freeze_stages
from ..models.transfer import (
    load_backbone_weights,
    load_initial_checkpoint,
    read_weights_source,
)
from ..runtime.checks import choice, fraction, nonneg_float, positive_int
from ..runtime.console import Progress
from ..runtime.console import say
from ..runtime.distributed import all_gather_objects, average_buffers
from ..training.config import RunConfig, setting
from ..training.engine import EpochResult
from ..training.trainer import Trainer
from .bad_images import BadImageLog
from .data import DATASETS, BatchedLoader, EpochSampler, ImageData, build_data, scan_data
from .shards import ShardDataset, shard_loader
from .evaluate import EvalResult, evaluate
from .subset import train_subset

__all__ = ["TrainConfig", "ClassificationTrainer", "train"]


# ModelSpec fields the run sets itself: from the data (classes, channels) or from their own option.
_SET_BY_THE_RUN = {"num_classes": "the dataset's class count", "in_chans": "--in-chans", "drop_rate": "--drop-rate"}


def _model_options(values: dict[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` checked against the model spec's field types (:func:`botnet.models.spec.check_overrides`).

    The fields the run sets are refused here, with what sets them, rather than
    clashing as duplicate keywords when the model is built.
    """
    from ..models.spec import check_overrides

    for name, source in _SET_BY_THE_RUN.items():
        if name in values:
            raise ValueError(f"entry {name!r} is set by the run: use {source}" if source.startswith("--")
                             else f"entry {name!r} is set by the run: it is {source}")
    return check_overrides(values)


@dataclass
class TrainConfig(RunConfig):
    """Every setting of a classification run (written to ``DIR/config.json``).

    The shared settings (recipe, precision, run) are :class:`RunConfig`'s.
    """

    model: str = setting("botnet_mini", "registered model name (see `botnet info --list`)", group="data and model")
    dataset: str = setting("digits", "digits (built in), fashion-mnist (Debian's dataset-fashion-mnist), folder "
                           "(an ImageFolder tree) or wds (tar shards of `botnet data pack`)",
                           choice(*DATASETS), group="data and model")
    data_dir: str | None = setting(None, "Fashion-MNIST IDX directory (default /usr/share/datasets/fashion-mnist), "
                                   "an ImageFolder root (class sub-directories, or train/ and val/), or for wds a "
                                   "`botnet data pack` directory or a pattern of training shards "
                                   "('/data/train-{000000..001281}.tar', 'pipe:aws s3 cp s3://b/train-{...}.tar -')",
                                   group="data and model")
    val_data_dir: str | None = setting(None, "wds with a shard pattern as --data-dir: the validation shards "
                                       "(a pattern)", group="data and model")
    epoch_size: int | None = setting(None, "images per epoch over all processes: caps an epoch of a folder, sets "
                                     "the epoch of shards (default: the whole training split)", positive_int,
                                     group="data and model")
    num_classes: int | None = setting(None, "wds shards without index.json: the number of classes",
                                      positive_int, group="data and model")
    img_size: int | None = setting(None, "input side in px (default: digits 32, fashion-mnist 28, folder 64)",
                                   positive_int, group="data and model")
    in_chans: int = setting(3, "image folders: read as grey (1) or RGB (3)", choice(1, 3), group="data and model")
    val_fraction: float = setting(0.2, "folders without val/: held-out share",
                                  fraction(0, 1, low_open=True), group="data and model")
    bad_images: str = setting("skip", "folders and shards: an image that fails to decode when read is replaced by "
                              "the next readable one, with its own label, and reported once (skip), or stops the "
                              "run naming the file and its label (error)", choice("skip", "error"),
                              group="data and model")
    scan_images: bool = setting(False, "folders: decode every image before training (split over the processes and "
                                "--workers threads) and leave out the unreadable ones up front",
                                group="data and model")
    drop_rate: float = setting(0.0, "dropout before the classifier", fraction(0, 1), group="data and model")
    model_kwargs: dict[str, Any] = setting({}, "model options (ModelSpec fields) as key=value, e.g. pos_emb=absolute "
                                           "heads=8", _model_options, group="data and model")
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
    initial_checkpoint: str | None = setting(
        None, "start from FILE, a botnet checkpoint or run directory (timm's name): every tensor whose shape fits, "
        "position tables interpolated, the classifier re-initialised when the class count differs",
        group="fine-tuning")
    train_fraction: float = setting(1.0, "train on this stratified share of the training split (fixed by --seed)",
                                    fraction(0, 1, low_open=True, high_open=False), group="data and model")

    def validate(self) -> None:
        super().validate()
        if self.scan_images and self.dataset != "folder":
            raise ValueError(f"--scan-images is for --dataset folder, not {self.dataset}")
        if self.train_fraction < 1 and self.dataset == "wds":
            raise ValueError("--train-fraction takes a share of a map-style dataset; streamed shards have none "
                             "(pack the share you want, or use --epoch-size)")
        if self.initial_checkpoint is not None and self.weights_backbone is not None:
            raise ValueError("--initial-checkpoint and --weights-backbone both give the starting weights; give one")
        if self.tta_flip and self.dataset == "digits":
            raise ValueError("--tta-flip mirrors images, which changes what a digit is; not for --dataset digits")


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
    score_name = "val top-1"
    config: TrainConfig

    def run_name(self) -> str:
        return f"{self.config.dataset}-{self.config.model}"

    # ------------------------------------------------------------------ set-up

    def build(self) -> None:
        config, info = self.config, self.dist
        self.data: ImageData = build_data(
            config.dataset, config.data_dir, config.img_size, config.aug, config.bad_images,
            config.val_fraction, config.seed, config.in_chans, workers=config.workers, reprob=config.reprob,
            epoch_size=config.epoch_size, rank=info.rank, world_size=info.world_size, batch_size=config.batch_size,
            num_classes=config.num_classes, val_data_dir=config.val_data_dir,
        )
        if config.train_fraction < 1:
            self.data.train = train_subset(self.data.train, config.train_fraction, config.seed)
            self.data.info = self.data.info | {"train_fraction": config.train_fraction,
                                               "train_size": len(self.data.train)}
        if config.scan_images:  # each process decodes its share; every process drops every bad file
            scan_data(self.data, config.bad_images, config.workers, info.rank, info.world_size,
                      gather=lambda found: all_gather_objects(found, info))
        self.bad_images = BadImageLog(self.data, info, self.run.path)
        self.loader_generator = torch.Generator()
        pin = self.device.type == "cuda"
        if isinstance(self.data.train, ShardDataset):  # streamed: the dataset itself deals shards by (seed, epoch)
            self.sampler: Any = self.data.train
            self.train_loader: Any = shard_loader(
                self.data.train, config.batch_size, config.workers, drop_last=True, pin_memory=pin,
                generator=self.loader_generator,
            )
            val_shard: Any = self.data.val  # read once over all ranks and workers: no duplicates
        else:
            # One sampler code path for 1 or N processes: the order is a function of (seed, epoch) only,
            # so a 2-process run sees the same global batches as a 1-process run with twice the batch.
            self.sampler = EpochSampler(self.data.train, info.world_size, info.rank, config.seed, config.epoch_size)
            if self.data.batch_augment is not None:  # in memory: whole batches, augmented with tensor ops
                self.train_loader = BatchedLoader(
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
                    f"epoch ({len(self.sampler)} images per process); lower --batch-size or raise --epoch-size"
                )
            val_shard = Subset(self.data.val, range(info.rank, len(self.data.val), info.world_size))  # no duplicates
        self.steps_per_epoch = len(self.train_loader)
        self.val_loader = DataLoader(
            val_shard, batch_size=max(config.batch_size, 128), shuffle=False, num_workers=config.workers,
            pin_memory=pin,
        )
        model = create_model(
            config.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans, drop_rate=config.drop_rate,
            **config.model_kwargs,
        )
        self.start_from_weights(model)
        if config.sync_bn and info.enabled:
            if self.device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.channels_last = self.device.type == "cuda" if config.channels_last is None else config.channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.mixing = _mixing(config, self.data.num_classes)

    def start_from_weights(self, model: BoTNet) -> None:
        """``--initial-checkpoint`` or ``--weights-backbone`` (read once: never again on resume), then
        ``--trainable-layers``.

        Frozen stages stay in eval mode (:func:`botnet.models.freeze.freeze_stages`):
        their BatchNorm keeps the loaded statistics, as detection's frozen BN does.
        """
        config = self.config
        path = config.initial_checkpoint or config.weights_backbone
        if path is not None and not self.resuming:
            source = read_weights_source(path)
            if config.initial_checkpoint is not None:
                report, flag = load_initial_checkpoint(model, source), "--initial-checkpoint"
            else:
                report, flag = load_backbone_weights(model, source), "--weights-backbone"
            self.initial_weights = {"option": flag, **report.to_dict()}
        if config.trainable_layers is not None and config.trainable_layers < MAX_TRAINABLE_LAYERS:
            freeze_stages(model, config.trainable_layers, eval_mode=True)

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

    def data_info(self) -> dict[str, Any]:
        data = self.data
        return data.info | {"class_names": data.class_names, "img_size": list(data.img_size),
                            "mean": list(data.mean), "std": list(data.std)}

    # ------------------------------------------------------------------ steps

    def prepare_batch(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(images, soft or hard targets, hard labels) on the device; MixUp / CutMix mix the whole batch."""
        images, labels = batch
        targets = labels
        if self.mixing is not None:
            images, targets = self.mixing(images, labels)
        device = self.device
        images = images.to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def step(self, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        images, targets, labels = batch
        logits = self.net(images)
        return {"loss": self.criterion(logits, targets), "count": torch.tensor(logits.shape[0]),
                "correct": (logits.argmax(dim=1) == labels).sum()}

    def train_record(self, result: EpochResult) -> dict[str, Any]:
        return {
            "train_loss": result.means["loss"],
            # With MixUp/CutMix the hard label is only one of two; accuracy against it means little.
            "train_acc": None if self.mixing is not None else result.means["correct"],
            "train_images_per_second": result.images_per_second,
            "data_wait_per_second": result.data_wait,
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
        record["bad_images"] = self.bad_images.collect(lambda line: say(line, self.dist.is_main))
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
            f"{data.img_size[0]}x{data.img_size[1]}: {data.info['train_size']} train / {data.info['val_size']} val images, "
            f"{info.world_size} process(es) on {self.device}, batch {config.batch_size}x{info.world_size}, "
            f"{config.epochs} epochs -> {self.run.path}"
        )
        if self.initial_weights:  # also in config.json, with every tensor's fate
            start = self.initial_weights
            lines.append(f"{start['option']} {start['source']}: {start['summary']}")
        return "\n".join(lines)

    def epoch_line(self, record: dict[str, Any]) -> str:
        train_acc = "" if record["train_acc"] is None else f" acc {record['train_acc']:.4f}"
        # With --ema the EMA is evaluated and saved; the raw weights' top-1 beside it shows when the
        # average lags or its averaged BN statistics do not fit (docs/TRAINING.md).
        raw = f" (raw {record['raw_val_acc']:.4f})" if "raw_val_acc" in record else ""
        return (
            f"epoch {record['epoch']:>3}/{self.config.epochs}  train loss {record['train_loss']:.4f}{train_acc}  "
            f"val loss {record['val_loss']:.4f} top-1 {record['val_acc']:.4f}{raw} top-5 {record['val_top5']:.4f}  "
            f"lr {record['lr']:.2e}  {record['train_images_per_second']:,.0f} img/s "
            f"({record['data_wait_per_second']:.0%} data wait)  {record['epoch_seconds']:.1f}s"
        )


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
