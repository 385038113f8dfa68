"""Old import path of :mod:`botnet.classification.evaluate` (kept for one release)."""

from .classification.evaluate import EvalResult, evaluate, evaluate_checkpoint  # noqa: F401

__all__ = ["EvalResult", "evaluate"]
