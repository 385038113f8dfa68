"""Old import path of :mod:`botnet.training.optim` (kept for one release)."""

from .training.optim import *  # noqa: F401,F403
from .training.optim import __all__  # noqa: F401
