"""Training Mask R-CNN / Faster R-CNN with BoTNet FPN backbones: one process or many (torchrun).

``train(TrainConfig(...))`` runs on the same engine as classification
(:class:`botnet.training.Trainer`): the same shared settings and flags, the
same run directory (``config.json``, ``metrics.jsonl``, ``best``/``last``
as ``.pt`` and ``.safetensors``, committed as one set per epoch), the same
optimiser policy (no weight decay on norms, biases, position tables), the
same schedule code and the same exact resume (every rank's RNG states are
saved; the sampler order is a function of (seed, epoch)). The score that
picks ``best`` is COCO box AP on the validation split.

Data are COCO-format folders (``ROOT/{split}/`` images and
``ROOT/annotations/instances_{split}.json``); ``data="synthetic"``
generates a small shapes dataset under ``OUT/synthetic``, so a run needs no
download.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..models import create_model
from ..models.transfer import WeightsSource, load_backbone_weights, read_weights_source
from ..runtime.checks import choice, fraction, positive_float, positive_int
from ..runtime.console import Progress, say
from ..runtime.distributed import barrier, broadcast_object, unwrap
from ..training.config import RunConfig, redefault, setting
from ..training.trainer import Trainer
from .checkpoint import detector_meta
from .models import DetectorConfig, build_from_config

__all__ = ["TrainConfig", "DetectionTrainer", "detection_step", "train", "check_attention_size"]

# Datasets whose images are all this small are not upscaled to torchvision's 800 px by default.
SMALL_IMAGES = 256
# Refuse sizes whose c5 attention logits alone would need more than this per image (fp32).
MAX_ATTENTION_BYTES = 16 * 2**30


def _returned_layer(value: Any) -> int:
    number = positive_int(value)
    if number > 4:
        raise ValueError(f"must be in 1..4 (layer1..layer4), got {value!r}")
    return number


@dataclass
class TrainConfig(RunConfig):
    """Every setting of a detection run (written to ``DIR/config.json``).

    Shared settings are :class:`RunConfig`'s, with detection's defaults:
    12 epochs, 2 images per process, SGD at ``0.02 x global batch / 16``
    (AdamW ``1e-4 x global batch / 16``) when ``lr`` is not given, weight
    decay 1e-4, the step schedule (x0.1 at 2/3 and 8/9 of the run), no
    gradient clipping.
    """

    epochs: int = redefault(RunConfig, "epochs", 12)
    batch_size: int = redefault(RunConfig, "batch_size", 2)
    lr: float | None = redefault(RunConfig, "lr", None)
    weight_decay: float = redefault(RunConfig, "weight_decay", 1e-4)
    sched: str = redefault(RunConfig, "sched", "step")
    clip_grad: float | None = redefault(RunConfig, "clip_grad", None)

    data: str = setting("synthetic", "COCO-layout root, or 'synthetic' to generate shapes under OUT/synthetic",
                        group="data")
    train_split: str = setting("train", "training split name (COCO 2017: train2017)", group="data")
    val_split: str = setting("val", "validation split name (COCO 2017: val2017; 'none': no validation)", group="data")
    max_train_images: int | None = setting(None, "use only the first N training images", positive_int, group="data")
    max_val_images: int | None = setting(None, "evaluate on the first N validation images only", positive_int,
                                         group="data")
    eval_every: int = setting(1, "evaluate every N epochs (and after the last)", positive_int, group="data")

    arch: str = setting("maskrcnn", "detector", choice("maskrcnn", "fasterrcnn"), group="model")
    backbone: str = setting("botnet50", "registered model used as backbone", group="model")
    norm: str | None = setting(None, "backbone BN: frozen, bn or syncbn (default frozen with --weights-backbone, "
                               "else bn)", choice("frozen", "bn", "syncbn"), group="model")
    returned_layers: list[int] = setting([1, 2, 3, 4], "stages fed to the FPN", _returned_layer, nargs="+",
                                         group="model")
    fpn_channels: int = setting(256, "FPN width", positive_int, group="model")
    box_head_size: int = setting(1024, "width of the box head's two fully connected layers", positive_int,
                                 group="model")
    mask_head_channels: int = setting(256, "channels of the mask head's convolutions", positive_int, group="model")
    anchor_scale: float = setting(8.0, "anchor size per level = scale x stride", positive_float, group="model")
    ref_img_size: int | None = setting(None, "image size the attention position tables are made for (default: the "
                                       "model's)", positive_int, group="model")
    min_size: int | None = setting(None, f"shorter image side after resizing (default 800, or for data whose images "
                                   f"are all at most {SMALL_IMAGES} px, like the synthetic shapes, their longest "
                                   "side)", positive_int, group="model")
    max_size: int | None = setting(None, "longer side at most (default 1333, or as --min-size for small images)",
                                   positive_int, group="model")
    box_batch_size: int = setting(512, "RoIs sampled per image for the box head", positive_int, group="model")
    rpn_post_nms_train: int = setting(2000, "proposals kept per image in training", positive_int, group="model")
    box_score_thresh: float = setting(0.05, "detections below this score are dropped at inference",
                                      fraction(0, 1, high_open=False), group="model")

    RESUMABLE = RunConfig.RESUMABLE + ("eval_every",)

    def validate(self) -> None:
        super().validate()
        if self.min_size and self.max_size and self.max_size < self.min_size:
            raise ValueError(f"--max-size {self.max_size} is smaller than --min-size {self.min_size}")


def check_attention_size(spec: dict[str, Any], min_size: int, max_size: int) -> None:
    """Refuse image sizes whose attention logits would not fit in memory, before the first step."""
    stride = 4 if spec["stem"] == "imagenet" else 1
    for stage in spec["stages"]:
        # A stage whose first block attends does so before its stride (the pool comes after attention).
        attends_at = stride if stage["attention"] >= stage["depth"] else stride * stage["stride"]
        stride *= stage["stride"]
        if not stage["attention"]:
            continue
        positions = -(-min_size // attends_at) * -(-max_size // attends_at)
        logits_bytes = positions**2 * spec["heads"] * 4
        if logits_bytes > MAX_ATTENTION_BYTES:
            raise ValueError(
                f"images of {min_size}x{max_size} px give {positions} attention positions at stride {attends_at}: "
                f"{logits_bytes / 2**30:.0f} GiB of attention logits per image. Use smaller --min-size / --max-size "
                "(small-stem models such as botnet_tiny are made for images of 32-256 px)"
            )


def detection_step(model: nn.Module, batch: tuple[list[Tensor], list[dict[str, Any]]]) -> dict[str, Tensor]:
    """One training step of a torchvision detector, as :func:`botnet.training.engine.train_one_epoch` takes it.

    ``(images, targets)`` -> the detector's loss terms, their sum as
    ``"loss"``, and ``"count"`` 1: the terms are means over the step
    (torchvision's), so an epoch's record is their mean over steps, as
    torchvision's logger gives it. Use ``functools.partial(detection_step,
    model)`` as the engine's ``step``.
    """
    images, targets = batch
    losses = model(images, targets)
    loss = sum(losses.values())
    return {**{key: value.detach() for key, value in losses.items()}, "loss": loss, "count": torch.ones(())}


class DetectionTrainer(Trainer):
    """:class:`~botnet.training.Trainer` for Mask R-CNN / Faster R-CNN (score: validation box AP)."""

    config_class = TrainConfig
    task = "detection"
    score_key = "bbox_AP"
    score_name = "box AP"
    command = "botnet detect train"
    config: TrainConfig

    def run_name(self) -> str:
        return f"detection-{self.config.backbone}"

    def build(self) -> None:
        from .data import CocoDetection, collate, make_synthetic_shapes, require_pycocotools, split_paths

        try:
            require_pycocotools()
        except ImportError as err:
            raise ValueError(str(err)) from None
        config, info = self.config, self.dist
        # Bad weights stop the run before anything is written (the synthetic data go into the run directory).
        self.weights_source = self._check_weights() if config.weights_backbone and not self.resuming else None
        synthetic = config.data == "synthetic"
        self.data_root = Path(self.run.path) / "synthetic" if synthetic else Path(config.data)
        if synthetic and info.is_main and not split_paths(self.data_root, "val")[1].is_file():
            say(f"generating the synthetic shapes dataset in {self.data_root}")
            make_synthetic_shapes(self.data_root, {"train": 200, "val": 50}, seed=config.seed)
        barrier(info)
        with_masks = config.arch == "maskrcnn"
        self.train_set = CocoDetection(*split_paths(self.data_root, config.train_split), train=True,
                                       with_masks=with_masks, limit=config.max_train_images)
        self.val_set = None
        if config.val_split != "none":
            self.val_set = CocoDetection(*split_paths(self.data_root, config.val_split), train=False,
                                         with_masks=with_masks, limit=config.max_val_images)
            if self.val_set.category_ids != self.train_set.category_ids:
                raise ValueError(
                    f"the {config.val_split} split's categories {self.val_set.category_ids} differ from the "
                    f"{config.train_split} split's {self.train_set.category_ids}"
                )
        else:
            self.score_key = None  # type: ignore[misc]  # no validation: the latest epoch is the best known
        self.iou_types = ["bbox", "segm"] if with_masks else ["bbox"]

        self.description = self._description()
        with warnings.catch_warnings():
            if self.resuming:  # the weights come from the checkpoint; the backbone weights are not read again
                warnings.filterwarnings("ignore", message="trainable_layers=")
            model = build_from_config(self.description, weights_backbone=self.weights_source).to(self.device)
        sizes = self.description.detector_kwargs
        check_attention_size(model.backbone.body_meta["spec"], sizes["min_size"], sizes["max_size"])
        self.model = model
        self.load_report = model.backbone.load_report
        if self.load_report is not None:
            self.initial_weights = {"option": "--weights-backbone", **self.load_report.to_dict()}

        # The order is a function of (seed, epoch) only, in 1 or N processes alike.
        self.sampler = DistributedSampler(self.train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=config.seed)
        self.loader_generator = torch.Generator()
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(self.train_set, batch_size=config.batch_size, sampler=self.sampler,
                                       num_workers=config.workers, collate_fn=collate, pin_memory=pin,
                                       generator=self.loader_generator)
        self.steps_per_epoch = len(self.train_loader)
        self.val_loader = None
        if self.val_set is not None:
            shard = Subset(self.val_set, range(info.rank, len(self.val_set), info.world_size))  # no duplicates
            self.val_loader = DataLoader(shard, batch_size=config.batch_size, num_workers=config.workers,
                                         collate_fn=collate, pin_memory=pin)

    def _check_weights(self) -> WeightsSource:
        """``--weights-backbone`` read, and matched against a bare backbone (raises if nothing fits)."""
        source = read_weights_source(self.config.weights_backbone)
        kwargs = {"ref_img_size": self.config.ref_img_size} if self.config.ref_img_size else {}
        load_backbone_weights(create_model(self.config.backbone, num_classes=0, **kwargs), source)
        return source

    def _description(self) -> DetectorConfig:
        """The detector's architecture (saved with its weights) from the settings and the data's image sizes."""
        config = self.config
        pretrained = config.weights_backbone is not None
        largest_side = max(max(i["width"], i["height"]) for i in self.train_set.coco.imgs.values())
        small = largest_side <= SMALL_IMAGES
        default_min, default_max = (largest_side, largest_side) if small else (800, 1333)
        min_size = config.min_size or default_min
        return DetectorConfig(
            arch=config.arch,
            backbone=config.backbone,
            num_classes=self.train_set.num_classes,
            norm=config.norm or ("frozen" if pretrained else "bn"),
            trainable_layers=config.trainable_layers if config.trainable_layers is not None else (3 if pretrained else 5),
            returned_layers=sorted(config.returned_layers),
            fpn_channels=config.fpn_channels,
            box_head_size=config.box_head_size,
            mask_head_channels=config.mask_head_channels,
            anchor_scale=config.anchor_scale,
            backbone_kwargs={"ref_img_size": config.ref_img_size} if config.ref_img_size else {},
            detector_kwargs={
                "min_size": min_size,
                "max_size": config.max_size or max(default_max, min_size),
                "box_batch_size_per_image": config.box_batch_size,
                "rpn_post_nms_top_n_train": config.rpn_post_nms_train,
                "box_score_thresh": config.box_score_thresh,
            },
        )

    def peak_lr(self) -> float:
        if self.config.lr is not None:
            return self.config.lr
        base = 0.02 if self.config.opt == "sgd" else 1e-4
        return base * self.config.batch_size * self.dist.world_size / 16

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.config.compile:  # the backbone only: the detector's Python-level box logic does not compile well
            unwrap(model).backbone.body.compile()  # in place: state-dict keys stay as they are
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model

    # ------------------------------------------------------------------ description and steps

    def meta(self) -> dict[str, Any]:
        return detector_meta(self.model, self.description, class_names=self.train_set.class_names,
                             category_ids=self.train_set.category_ids)

    def data_info(self) -> dict[str, Any]:
        return {
            "root": str(self.data_root), "train_split": self.config.train_split, "val_split": self.config.val_split,
            "train_images": len(self.train_set), "val_images": len(self.val_set) if self.val_set else 0,
            "class_names": self.train_set.class_names, "category_ids": self.train_set.category_ids,
            "annotation_report": {"train": dict(self.train_set.report),
                                  "val": dict(self.val_set.report) if self.val_set else {}},
            "detector": self.description.__dict__,
        }

    def step(self, batch: tuple[list[Tensor], list[dict[str, Any]]]) -> dict[str, Tensor]:
        return detection_step(self.net, batch)

    def evaluate(self, epoch: int, progress: Progress) -> dict[str, Any]:
        from .evaluate import evaluate

        config = self.config
        if self.val_loader is None or ((epoch + 1) % config.eval_every and epoch + 1 != config.epochs):
            return {}
        progress.start("  evaluating", len(self.val_loader))
        metrics = evaluate(
            unwrap(self.model), self.val_loader, self.device, self.val_set.coco, self.val_set.category_ids,
            self.iou_types, autocast_dtype=self.amp_dtype, on_step=lambda: progress.update(1),
        )
        progress.stop()
        record = {} if metrics is None else {f"{t}_{k}": v for t, m in metrics.items() for k, v in m.items()}
        return dict(broadcast_object(record, self.dist))  # rank 0 scored; every rank keeps the same record

    # ------------------------------------------------------------------ printing

    def describe(self) -> str:
        config, info = self.config, self.dist
        params = sum(p.numel() for p in self.model.parameters())
        val = len(self.val_set) if self.val_set else 0
        lines = [
            f"[bold]botnet detect train[/] {config.arch} + {config.backbone} FPN ({params / 1e6:.2f}M params): "
            f"{len(self.train_set)} training images, {val} validation; {info.world_size} process(es) on "
            f"{self.device}, {config.batch_size * info.world_size} images per step, {self.steps_per_epoch} steps "
            f"per epoch, lr {self.peak_lr():.3g}, {config.epochs} epochs -> {self.run.path}"
        ]
        if self.load_report is not None:
            lines.append(f"backbone weights from {self.load_report.source}: {self.load_report.summary()}")
        return "\n".join(lines)

    def epoch_line(self, record: dict[str, Any]) -> str:
        parts = [f"epoch {record['epoch']:>3}/{self.config.epochs}", f"loss {record['loss']:.3f}"]
        parts += [f"{name} AP {record[key]:.3f}" for key, name in (("bbox_AP", "box"), ("segm_AP", "mask"))
                  if key in record]
        parts.append(f"lr {record['lr']:.2e}  {record['train_images_per_second']:,.1f} img/s "
                     f"({record['data_wait_per_second']:.0%} data wait)  {record['epoch_seconds']:.0f}s")
        return "  ".join(parts)


def train(config: TrainConfig | None = None, resume: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Train a detector, or continue a run (``resume``: a run directory; only
    :attr:`TrainConfig.RESUMABLE` settings may change).

    Returns:
        summary: out dir, best box AP and its epoch, the last epoch's record, seconds.
    """
    return DetectionTrainer(config, resume, **overrides).fit()
