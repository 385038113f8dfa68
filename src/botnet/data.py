"""Old import path of :mod:`botnet.classification.data` (kept for one release)."""

from .classification.data import *  # noqa: F401,F403
from .classification.data import __all__  # noqa: F401
