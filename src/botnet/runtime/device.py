"""Choosing and checking the device, the same way in every command."""

from __future__ import annotations

import torch

__all__ = ["parse_device", "resolve_device"]


def parse_device(name: str) -> torch.device:
    """``name`` as a device that exists on this machine ("auto" is not resolved here).

    Raises:
        ValueError: not a device name, or a CUDA / MPS device this machine
            does not have (one line, says what there is; callers prefix the
            option's name).
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name!r}: CUDA is not available on this machine (use cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name!r}: MPS is not available on this machine (use cpu)")
    elif device.type != "cpu":
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU if CUDA is available (``local_rank`` under torchrun), else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = parse_device(name)
    except ValueError as err:
        raise ValueError(f"--device {err}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
