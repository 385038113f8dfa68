"""Image classification: data, training, evaluation and prediction with BoTNets.

The same file names as :mod:`botnet.detection` where they do the same job:
``data``, ``train`` (``TrainConfig`` + ``train(config, resume=...)``),
``evaluate``, ``predict``. Both trainers run on :mod:`botnet.training`.
"""

from .data import DATASETS, ImageData, build_data
from .evaluate import EvalResult, evaluate, evaluate_checkpoint
from .predict import classify_files, predict_topk
from .train import ClassificationTrainer, TrainConfig, train

__all__ = [
    "DATASETS",
    "ClassificationTrainer",
    "EvalResult",
    "ImageData",
    "TrainConfig",
    "build_data",
    "classify_files",
    "evaluate",
    "evaluate_checkpoint",
    "predict_topk",
    "train",
]
