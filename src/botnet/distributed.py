"""Old import path of :mod:`botnet.training.distributed` (kept for one release)."""

from .training.distributed import *  # noqa: F401,F403
from .training.distributed import __all__  # noqa: F401
