"""A training run of any task: set-up, resume, optimiser, schedule, epochs, checkpoints, metrics.

A task (classification, detection) subclasses :class:`Trainer` and says
only what is its own: its config class, name and score key; how to build
data and model (:meth:`Trainer.build`); what one step computes
(:meth:`Trainer.step`, run by the one epoch loop,
:func:`botnet.training.engine.train_one_epoch`); evaluation
(:meth:`Trainer.evaluate`); and the saved model description
(:meth:`Trainer.meta`). Everything else has a default here, and the base
class does the rest, identically for every task:

* checks the config and the output directory before any data is read;
* picks and checks the device, joins torchrun's process group;
* seeds every RNG (``seed + rank``);
* builds the optimiser (:func:`~botnet.training.optim.param_groups`: no
  decay on norms, biases, position tables), the schedule (warm-up, then
  cosine / step / constant), the grad scaler for fp16, ``torch.compile``
  and DistributedDataParallel;
* runs every epoch through :func:`~botnet.training.engine.train_one_epoch`
  (autocast, micro-batches, backward, clipping, EMA, the non-finite-loss
  check, progress, throughput and data-wait, means over ranks);
* after every epoch, commits ``last.pt`` / ``last.safetensors`` /
  ``metrics.jsonl`` (and ``best.*`` when the task's score improved) as one
  set (:class:`~botnet.training.rundir.RunDir`), with the optimiser,
  schedule, scaler, history and every rank's RNG states;
* ``resume``: continues from ``last.pt`` with the run's saved settings (only
  :attr:`RunConfig.RESUMABLE` ones may change) and restored RNG states. The
  sampler order and worker seeds are functions of (seed, epoch, rank), so a
  run killed at any moment and resumed ends with the same metrics as one
  never interrupted (same machine and thread count). An ``out`` other than
  the run's own directory is refused. A run that already trained its
  ``epochs`` is complete: ``fit()`` builds nothing, writes nothing and
  returns the run's summary (like timm's and torchvision's loops, whose
  ``range(start_epoch, epochs)`` is then empty); more ``epochs`` extend it;
* the run directory is locked by rank 0 for the whole run (one run per
  directory); the other ranks act on rank 0's outcome;
* a stop (SIGINT / SIGTERM, :mod:`botnet.runtime.interrupts`) or a failed
  write (:class:`~botnet.runtime.store.WriteError`) leaves the last committed
  epoch in force and becomes one line that says what is saved and the
  command that resumes it.

Only rank 0 writes files and prints; the final summary line is printed
here for every task.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..runtime.checks import check_out_dir
from ..runtime.console import Progress, say
from ..runtime.device import resolve_device
from ..runtime.distributed import (DistInfo, PeerFailed, all_gather_objects, barrier, broadcast_object, cleanup,
                                   init_distributed, launched_as_main, unwrap)
from ..runtime import interrupts
from ..runtime.interrupts import Interrupted, signal_name
from ..runtime.lock import check_free
from ..runtime.store import WriteError, write_safetensors
from .config import RunConfig, check_value
from .elastic import resolve_resume
from .engine import EpochResult, train_one_epoch
from .optim import create_optimizer, current_lr, lr_schedule
from .rng import epoch_seed, rng_state, seed_everything, set_rng_state
from .rundir import RunDir

__all__ = ["Trainer", "versions"]


def versions() -> dict[str, str]:
    import torchvision

    from .. import __version__

    return {
        "botnet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
    }


class Trainer:
    """One training run of a task (see the module docstring); ``fit()`` runs it."""

    config_class: ClassVar[type[RunConfig]] = RunConfig
    task: ClassVar[str] = "task"
    # The record entry whose increase makes an epoch the new "best" (None: every epoch is), and its
    # name in the summary line.
    score_key: ClassVar[str | None] = None
    score_name: ClassVar[str] = "score"
    # The command that trains this task (named in the line that says how to resume).
    command: ClassVar[str] = "botnet train"

    def __init__(self, config: RunConfig | None = None, resume: str | os.PathLike[str] | None = None,
                 **overrides: Any) -> None:
        self.run: RunDir | None = None
        self.start_epoch, self.history = 0, []
        self.finished = False
        try:
            self._init(config, resume, overrides)
        except BaseException as err:
            explained = self._explained_stop(err)
            if explained is err:
                raise
            raise explained from None

    def _init(self, config: RunConfig | None, resume: str | os.PathLike[str] | None,
              overrides: dict[str, Any]) -> None:
        checkpoint = None
        resume_run = None
        out = overrides.get("out", config.out if config is not None else None)
        resume = resolve_resume(resume, out)
        if resume is not None:
            resume_run, resume_path = RunDir.for_resume(resume)
            self.run = resume_run  # from here on, a stop names what this directory holds
            checkpoint = resume_run.load_last(resume_path)
            config = self._resumed_config(checkpoint, resume_path, overrides)
        elif config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        config.validate()
        self.config = config
        self.resuming = checkpoint is not None  # then the initial weights are not read again
        if checkpoint is not None:
            self.saved_epochs = int(checkpoint["config"].get("epochs", config.epochs))
            if int(checkpoint["epoch"]) >= config.epochs:  # nothing left to train: see fit()
                check_free(resume_run.path)  # unless another process is extending it right now
                self.finished = True
                self.checkpoint = checkpoint
                return
        self.device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        if config.out is not None:
            check_out_dir(config.out)  # before the process group, data or model: a typo costs nothing
        self.dist: DistInfo = init_distributed(self.device.type, config.dist_timeout)
        try:
            self._set_up(checkpoint, resume_run)
        except BaseException:
            if self.dist.is_main and self.run is not None:
                self.run.discard_if_empty()  # also gives up the lock
            cleanup(self.dist)
            raise

    # ------------------------------------------------------------------ set-up

    def _resumed_config(self, checkpoint: dict[str, Any], path: Path, overrides: dict[str, Any]) -> RunConfig:
        """The checkpoint's settings, with ``overrides`` of the resumable ones."""
        saved = checkpoint.get("config")
        if not isinstance(saved, dict) or "optimizer" not in checkpoint:
            raise ValueError(f"{str(path)!r} is not a training checkpoint (no config/optimizer)")
        if checkpoint.get("task", self.task) != self.task:
            raise ValueError(f"{str(path)!r} is a {checkpoint['task']} run, not {self.task}")
        fields = {spec.name: spec for spec in dataclasses.fields(self.config_class)}
        config = self.config_class(**{k: v for k, v in saved.items() if k in fields})
        for name, value in overrides.items():
            if name not in fields:
                raise ValueError(f"unknown setting {name!r}")
            value = check_value(self.config_class, fields[name], value)
            if name == "out":
                if Path(value).resolve() != path.parent.resolve():
                    raise ValueError(
                        f"--out {value!r} with --resume {str(path.parent)!r}: a resumed run continues in its own "
                        "directory; leave out --out (or start a new run there without --resume)"
                    )
                continue
            if value == getattr(config, name):
                continue
            if name not in config.RESUMABLE:
                raise ValueError(
                    f"cannot change {name} when resuming ({getattr(config, name)!r} in the checkpoint, {value!r} "
                    f"given); only {', '.join(config.RESUMABLE)} may change"
                )
            setattr(config, name, value)
        config.out = str(path.parent)
        return config

    def _set_up(self, checkpoint: dict[str, Any] | None, resume_run: RunDir | None) -> None:
        config, info = self.config, self.dist
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if config.out is None:
            config.out = self.default_out()
        config.out = str(broadcast_object(config.out, info))
        self.run = resume_run or RunDir(config.out)
        self.removed_temporaries: list[str] = []
        failure: BaseException | None = None
        if info.is_main:  # rank 0 alone locks and prepares; the others follow its outcome
            try:
                self.removed_temporaries = self.run.prepare(resuming=checkpoint is not None)
            except (ValueError, OSError) as err:
                failure = err
        if broadcast_object(failure is not None, info):
            if failure is not None:
                raise failure
            raise PeerFailed("rank 0 could not prepare the run directory")
        barrier(info)

        seed_everything(config.seed + info.rank)
        self.build()
        self.amp_dtype = getattr(torch, config.amp_dtype) if config.amp else None
        if self.amp_dtype is torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16
        if self.amp_dtype is torch.float16 and self.device.type == "cpu":
            say("[yellow]note[/]: float16 autocast on a CPU is emulated and slow; bfloat16 is not", info.is_main)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.optimizer = create_optimizer(self.model, config.opt, self.peak_lr(), config.weight_decay, config.momentum,
                                          config.layer_decay)
        steps = self.steps_per_epoch
        milestones = config.decay_milestones
        if milestones is None:
            milestones = [round(config.epochs * 2 / 3), round(config.epochs * 8 / 9)]
        self.scheduler = lr_schedule(
            self.optimizer, config.epochs * steps, round(config.warmup_epochs * steps), config.sched,
            milestones=[round(m * steps) for m in milestones], decay_rate=config.decay_rate,
            min_lr_ratio=config.min_lr_ratio,
        )
        self.net = self.wrap(self.model)
        self.start_epoch, self.history = 0, []
        self.best_score, self.best_epoch = -float("inf"), 0
        self.restored_rng = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def default_out(self) -> str:
        return str(Path("runs") / f"{self.run_name()}-{time.strftime('%Y%m%d-%H%M%S')}")

    def run_name(self) -> str:
        """The default run directory's name before its time stamp."""
        return self.task

    def peak_lr(self) -> float:
        """The learning rate the schedule peaks at (tasks may derive a default from the batch)."""
        assert self.config.lr is not None
        return self.config.lr

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: compiled and/or DistributedDataParallel."""
        net: nn.Module = model
        if self.config.compile:
            net = torch.compile(net)
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        return net

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    # ------------------------------------------------------------------ what a task provides

    model: nn.Module
    train_loader: Any
    sampler: Any  # set_epoch(epoch): the epoch's order, a function of (seed, epoch)
    loader_generator: torch.Generator  # seeds the epoch's augmentation and loader workers
    steps_per_epoch: int
    ema: Any = None  # an AveragedModel of the weights, updated after every step, when a task keeps one
    # What the run started from (LoadReport.to_dict()), when it started from weights; kept in every
    # checkpoint so config.json still says it after a resume.
    initial_weights: dict[str, Any] | None = None

    def build(self) -> None:
        """Build data, loaders and ``self.model``; set ``train_loader``, ``sampler``,
        ``loader_generator`` and ``steps_per_epoch``."""
        raise NotImplementedError

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One (micro-)batch's forward pass: ``{"loss", "count", **sums}`` (see :mod:`botnet.training.engine`)."""
        raise NotImplementedError

    def evaluate(self, epoch: int, progress: Progress) -> dict[str, Any]:
        """Record entries of the validation after ``epoch`` (every rank gets them); {} if skipped."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """The JSON-able description saved with the weights (rebuilds the model)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ defaults a task may change

    def prepare_batch(self, batch: Any) -> Any:
        """A whole batch as the step takes it: here, every tensor moved to the device."""
        return _to_device(batch, self.device)

    def set_epoch(self, epoch: int) -> None:
        """Make the epoch's order and augmentation functions of (seed, epoch, rank) only, so it replays
        exactly after a resume."""
        self.sampler.set_epoch(epoch)
        self.loader_generator.manual_seed(epoch_seed(self.config.seed, epoch, self.dist.rank))

    def train_record(self, result: EpochResult) -> dict[str, Any]:
        """Record entries of a training epoch: the step means, throughput and the data-wait fraction."""
        return {**result.means, "train_images_per_second": result.images_per_second,
                "data_wait_per_second": result.data_wait}

    def eval_state(self) -> dict[str, torch.Tensor]:
        """The state dict of the evaluated weights (saved as ``model`` in the .pt files)."""
        return unwrap(self.model).state_dict()

    def write_weights(self, path: Path, meta: dict[str, Any]) -> None:
        """Write the evaluated weights with ``meta`` as safetensors to ``path`` (not atomically)."""
        write_safetensors(path, self.eval_state(), meta)

    def extra_state(self) -> dict[str, Any]:
        """Task state to save beside the common one (e.g. an EMA)."""
        return {}

    def load_extra_state(self, checkpoint: dict[str, Any]) -> None:
        """Restore :meth:`extra_state` (and the training weights) from a checkpoint."""
        unwrap(self.model).load_state_dict(checkpoint["model"])

    def describe(self) -> str:
        """The header line printed when the run starts."""
        return f"[bold]botnet {self.task}[/] -> {self.run.path}"

    def epoch_line(self, record: dict[str, Any]) -> str:
        """The line printed after every epoch."""
        return f"epoch {record['epoch']:>3}/{self.config.epochs}"

    def data_info(self) -> dict[str, Any]:
        """Facts about the data for ``config.json``."""
        return {}

    # ------------------------------------------------------------------ state

    def resume_command(self) -> str:
        """The command that continues this run from its last committed epoch."""
        assert self.run is not None
        extra = ""
        if hasattr(self, "config") and self.config.epochs != getattr(self, "saved_epochs", self.config.epochs):
            extra = f" --epochs {self.config.epochs}"  # last.pt still holds the old number
        if getattr(self, "dist", None) is not None and self.dist.enabled:
            return f"torchrun <the same options> -m {self.command} --resume {self.run.path}{extra}"
        return f"{self.command} --resume {self.run.path}{extra}"

    def saved_state(self) -> str:
        """What the run directory holds now, in words: "epoch 3 of 10 is saved in DIR" / "nothing was saved"."""
        epoch = self.run.committed_epoch() if self.run is not None else None
        if not epoch:
            return "no epoch was saved"
        of = f" of {self.config.epochs}" if hasattr(self, "config") else ""
        return f"epoch {epoch}{of} is saved in {self.run.path}"

    def _explained_stop(self, err: BaseException) -> BaseException:
        """What to raise for ``err``: a stop (a signal, or a failure the signal caused, such as a DataLoader
        worker it ended) or a failed write, explained; anything else as it is."""
        signum = interrupts.received()
        if signum is not None and isinstance(err, Exception):
            err = Interrupted(signum)
        if isinstance(err, (Interrupted, WriteError)):
            return self._explained(err)
        return err

    def _explained(self, err: Interrupted | WriteError) -> Interrupted | WriteError:
        """``err`` as one line that also says what is saved and how to go on."""
        saved = self.saved_state()
        resumable = self.run is not None and self.run.committed_epoch()
        if isinstance(err, Interrupted):
            if resumable:
                how = f"resume with: {self.resume_command()}"
            else:
                how = "run the same command again to start over"
            return Interrupted(err.signum, f"interrupted by {signal_name(err.signum)}; {saved}; {how}")
        if resumable:
            how = f"free space or fix the disk, then resume with: {self.resume_command()}"
        else:
            how = "free space or fix the disk, then run the same command again"
        explained = WriteError(err.path, err.errno or 0)
        explained.message = f"{err.message}; {saved}; {how}"
        return explained

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.load_extra_state(checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        # The learning rate of the step to come, from this run's schedule (it differs from the saved
        # one when --epochs changed on resume; otherwise it is the same number).
        step = self.scheduler.last_epoch
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = int(checkpoint["epoch"])
        self._restore_progress(checkpoint)
        self.initial_weights = checkpoint.get("initial_weights")
        states = checkpoint["rng"]
        if self.dist.rank >= len(states) or len(states) != self.dist.world_size:
            raise ValueError(
                f"the checkpoint holds RNG states of {len(states)} process(es); resume it with as many "
                f"(this run has {self.dist.world_size})"
            )
        self.restored_rng = states[self.dist.rank]

    def _restore_progress(self, checkpoint: dict[str, Any]) -> None:
        """The metric history and the best epoch and score recorded in ``checkpoint``."""
        self.history = list(checkpoint["history"])
        self.best_score = float(checkpoint.get("best_score", checkpoint.get("best_acc", -float("inf"))))
        self.best_epoch = int(checkpoint["best_epoch"])

    def _checkpoint(self, epoch: int, meta: dict[str, Any], rng: list[Any]) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": {k: v.detach().cpu() for k, v in self.eval_state().items()},
            "meta": meta,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epoch + 1,
            "history": self.history,
            "best_metric": self.score_key,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "rng": rng,
            "config": dataclasses.asdict(self.config),
            "initial_weights": self.initial_weights,
            **self.extra_state(),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        rng = all_gather_objects(rng_state(), self.dist)  # collective: every rank takes part
        if not self.dist.is_main:
            return
        meta = self.meta()
        checkpoint = self._checkpoint(epoch, meta, rng)
        self.run.commit_epoch(epoch + 1, checkpoint, lambda tmp: self.write_weights(tmp, meta), self.history, improved)
        self.saved_epochs = self.config.epochs

    def _config_payload(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "settings": dataclasses.asdict(self.config),
            "world_size": self.dist.world_size,
            "backend": self.dist.backend,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "data": self.data_info(),
            "model_params": sum(p.numel() for p in self.model.parameters()),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from_epoch": self.start_epoch or None,
            "initial_weights": self.initial_weights,
        }

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns a summary (out dir, best and final scores, seconds).

        A resumed run that already trained its ``epochs`` is complete: nothing is built, trained or
        written, and its summary is returned (printed by rank 0 with the words "already complete").
        """
        if self.finished:
            return self._complete()
        try:
            return self._fit()
        except BaseException as err:
            explained = self._explained_stop(err)
            if explained is err:
                raise
            raise explained from None
        finally:
            if self.dist.is_main and self.run is not None:
                self.run.release()
            cleanup(self.dist)

    def _complete(self) -> dict[str, Any]:
        checkpoint = self.checkpoint
        self._restore_progress(checkpoint)
        elapsed = self.history[-1]["elapsed_seconds"] if self.history else 0.0
        summary = self._summary(elapsed)
        summary["epochs"] = int(checkpoint["epoch"])
        summary["complete"] = True
        line = self._summary_line(summary).replace("[bold]done[/]", "[bold]already complete[/]", 1)
        done = int(checkpoint["epoch"])
        say(f"{line}; nothing to train (--epochs {self.config.epochs}, {done} done: give --epochs more than {done} "
            "to train on)", launched_as_main())
        return summary

    def _fit(self) -> dict[str, Any]:
        config, info = self.config, self.dist
        main = info.is_main
        if main:
            self.run.write_config(self._config_payload())
            if self.start_epoch:
                self.run.write_metrics(self.history)  # exactly the epochs of last.pt
        if self.run.lock_notice:
            say(f"[yellow]note[/]: {self.run.lock_notice}", main)
        for name in self.removed_temporaries:
            say(f"[yellow]removed[/] {name}: an unfinished write of an interrupted run", main)
        say(self.describe() + (f" (resuming after epoch {self.start_epoch})" if self.start_epoch else ""), main)
        if self.restored_rng is not None:
            set_rng_state(self.restored_rng)
        elapsed = self.history[-1]["elapsed_seconds"] if self.history else 0.0
        with Progress(main and config.progress) as progress:
            for epoch in range(self.start_epoch, config.epochs):
                start = time.perf_counter()
                record: dict[str, Any] = {"epoch": epoch + 1}
                record.update(self._train_epoch(epoch, progress))
                record["lr"] = current_lr(self.optimizer)
                record.update(self.evaluate(epoch, progress))
                score = record.get(self.score_key) if self.score_key else None
                improved = (score is not None and score > self.best_score) or self.score_key is None
                if score is None and self.best_epoch == 0 and self.score_key is not None:
                    improved = True  # no validation yet: the latest weights are the best known
                if improved:
                    self.best_epoch = epoch + 1
                    if score is not None:
                        self.best_score = float(score)
                record["epoch_seconds"] = time.perf_counter() - start
                elapsed += record["epoch_seconds"]
                record["elapsed_seconds"] = elapsed
                self.history.append(record)
                self._save(epoch, improved)
                say(self.epoch_line(record) + ("  [green]best[/]" if improved and score is not None else ""), main)
        barrier(info)
        summary = self._summary(elapsed)
        say(self._summary_line(summary), main)
        return summary

    def _train_epoch(self, epoch: int, progress: Progress) -> dict[str, Any]:
        """One epoch through the engine; its record entries."""
        self.set_epoch(epoch)
        result = train_one_epoch(
            self.net, self.step, self.train_loader, self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            clip_grad=self.config.clip_grad, autocast=self.autocast, accum_steps=self.config.accum_steps,
            prepare=self.prepare_batch, ema=self.ema,
            # Reading a CUDA flag makes the host wait for the GPU, ending the overlap of Python dispatch
            # and GPU work: there the non-finite flag is read every 10 steps.
            check_every=1 if self.device.type == "cpu" else 10,
            dist=self.dist, progress=progress, description=f"epoch {epoch + 1}/{self.config.epochs}", epoch=epoch,
        )
        return self.train_record(result)

    def _summary(self, elapsed: float) -> dict[str, Any]:
        final = self.history[-1] if self.history else {}
        best = self.best_score if self.best_score > -float("inf") else None
        summary = {
            "out": str(self.run.path),
            "epochs": self.config.epochs,
            "best_metric": self.score_key,
            "best_score": best,
            "best_epoch": self.best_epoch,
            "final": final,
            "elapsed_seconds": elapsed,
        }
        if self.score_key:  # e.g. best_val_acc / final_val_acc
            summary[f"best_{self.score_key}"] = best
            summary[f"final_{self.score_key}"] = final.get(self.score_key)
        return summary

    def _summary_line(self, summary: dict[str, Any]) -> str:
        where = f"{summary['elapsed_seconds']:.0f}s training; checkpoints in {summary['out']}"
        final = summary["final"].get(self.score_key) if self.score_key else None
        if summary["best_score"] is None or final is None:
            return f"[bold]done[/]: {summary['epochs']} epochs, {where}"
        return (f"[bold]done[/]: best {self.score_name} {summary['best_score']:.4f} (epoch {summary['best_epoch']}), "
                f"final {final:.4f}, {where}")


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value
