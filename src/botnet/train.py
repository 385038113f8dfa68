"""Old import path of :mod:`botnet.classification.train` (kept for one release)."""

from .classification.train import RESUMABLE_OVERRIDES, ClassificationTrainer, TrainConfig, train  # noqa: F401
from .training.device import resolve_device  # noqa: F401
from .training.rng import rng_state, seed_everything, set_rng_state  # noqa: F401
from .training.trainer import versions  # noqa: F401

__all__ = ["TrainConfig", "train", "RESUMABLE_OVERRIDES"]
