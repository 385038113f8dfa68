"""The task-independent training runtime behind ``botnet train`` and ``botnet detect train``.

* :mod:`~botnet.training.config`: settings as dataclasses (the shared part,
  :class:`RunConfig`, declared once), value checks, YAML config files;
* :mod:`~botnet.training.device`, :mod:`~botnet.training.distributed`:
  device choice and checks, torchrun process groups;
* :mod:`~botnet.training.rng`: seeding, capturing and restoring RNG states;
* :mod:`~botnet.training.optim`: parameter groups, optimisers, the schedule;
* :mod:`~botnet.training.rundir`: the run directory (config, metrics,
  checkpoint sets, resume);
* :mod:`~botnet.training.console`: progress bars and messages;
* :mod:`~botnet.training.trainer`: the epoch loop a task subclasses.
"""

from .config import RunConfig, load_config_file
from .device import parse_device, resolve_device
from .optim import create_optimizer, lr_schedule, param_groups
from .rundir import RunDir
from .trainer import Trainer

__all__ = [
    "RunConfig",
    "RunDir",
    "Trainer",
    "create_optimizer",
    "load_config_file",
    "lr_schedule",
    "param_groups",
    "parse_device",
    "resolve_device",
]
