"""The task-independent training runtime behind ``botnet train`` and ``botnet detect train``.

* :mod:`~botnet.training.config`: settings as dataclasses (the shared part,
  :class:`RunConfig`, declared once), YAML config files;
* :mod:`~botnet.training.trainer`: a run of any task (:class:`Trainer`):
  set-up, resume, optimiser, schedule, epochs, checkpoints;
* :mod:`~botnet.training.engine`: the one epoch loop over a task's step;
* :mod:`~botnet.training.rundir`: the run directory (config, metrics,
  checkpoint sets, resume);
* :mod:`~botnet.training.optim`: parameter groups, optimisers, the schedule;
* :mod:`~botnet.training.rng`: seeding, capturing and restoring RNG states.

Device, processes, console, input checks and the file store, which every
command needs, are :mod:`botnet.runtime`'s.
"""

from .config import RunConfig, load_config_file
from .engine import EpochResult, train_one_epoch
from .optim import create_optimizer, lr_schedule, param_groups
from .rundir import RunDir
from .trainer import Trainer

__all__ = [
    "EpochResult",
    "RunConfig",
    "RunDir",
    "Trainer",
    "create_optimizer",
    "load_config_file",
    "lr_schedule",
    "param_groups",
    "train_one_epoch",
]
