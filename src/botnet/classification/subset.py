"""A fixed share of a training split: ``botnet train --train-fraction`` (few-shot and transfer studies).

The share is taken per class (stratified), so 10 % of a balanced split is
still balanced, and it is a function of (dataset, fraction, seed) only:
every process of a run and every resume picks the same images.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from .data import InMemoryImages

__all__ = ["dataset_labels", "stratified_indices", "train_subset"]


def dataset_labels(dataset: Dataset) -> Tensor:
    """The labels (N,) of an in-memory dataset or an image folder's (path, label) samples."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Tensor):
        return labels
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return torch.tensor([label for _, label in samples], dtype=torch.long)
    raise ValueError(f"--train-fraction: cannot read the labels of a {type(dataset).__name__} dataset")


def stratified_indices(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of ``round(fraction x count)`` (at least 1) random items of every class."""
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in labels.unique(sorted=True).tolist():
        members = (labels == label).nonzero().flatten()
        count = max(1, round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(keep).sort().values


def train_subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """``dataset`` itself for ``fraction`` 1, else its stratified share (an :class:`InMemoryImages` stays one,
    so batched augmentation still applies)."""
    if fraction >= 1:
        return dataset
    index = stratified_indices(dataset_labels(dataset), fraction, seed)
    if isinstance(dataset, InMemoryImages):
        return InMemoryImages(dataset.images[index], dataset.labels[index], dataset.transform)
    select = getattr(dataset, "select", None)  # an image folder: still one (its unreadable-file handling, scan)
    if select is not None:
        return select(index.tolist())
    return Subset(dataset, index.tolist())
