"""Old import path of :mod:`botnet.classification.predict` (kept for one release)."""

from .classification.predict import *  # noqa: F401,F403
from .classification.predict import __all__  # noqa: F401
