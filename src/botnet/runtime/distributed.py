"""torch.distributed set-up for ``torchrun`` launches (one process per device).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything runs in
one process and the helpers are no-ops, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "PeerFailed", "init_distributed", "all_reduce_sum", "all_gather_objects", "average_buffers", "broadcast_object",
    "barrier", "cleanup", "launched_as_main", "unwrap",
]


class PeerFailed(Exception):
    """Another rank (rank 0) failed and reported it in one line; this rank stops quietly, so a torchrun
    job prints the reason once, not once per process."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_as_main() -> bool:
    """Whether this process is rank 0 of its torchrun job, or runs without torchrun: the one that prints
    the job's lines. Read from torchrun's environment, so it holds before the process group is joined,
    and where it never is (a command that fails or stops first)."""
    return os.environ.get("RANK", "0") == "0"


def init_distributed(device_type: str, timeout: float | None = None) -> DistInfo:
    """Join the process group torchrun describes: nccl on CUDA, gloo on CPU.

    ``timeout``: seconds that joining the group and every collective may wait
    for the other ranks before failing (None: torch's default, 30 minutes).
    A failure ends the process, and under ``torchrun --max-restarts`` the
    group is started again: so a rank that cannot connect, or a peer that
    hangs, costs ``timeout`` instead of half an hour.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run without torchrun")
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        from datetime import timedelta

        limit = {} if timeout is None else {"timeout": timedelta(seconds=timeout)}
        # torchrun's rendezvous store (env://). Under an elastic restart the agent serves the same store
        # to every attempt, and the keys the process group exchanges its addresses under carry no attempt:
        # a rank of attempt N could read its peer's address of attempt N-1 and wait on a closed port
        # (seen: "Gloo connectFullMesh failed ... Connection refused", or a hang in connect). So the group
        # joins under a prefix of its own attempt.
        store, rank, world = next(dist.rendezvous("env://", **limit))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"botnet/attempt_{attempt}", store),
                                rank=rank, world_size=world, **limit)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over all ranks.

    Each rank updates its running statistics from its own images, so without
    this the ranks would evaluate (and rank 0 would save) different models.
    """
    if not info.enabled:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(info.world_size)


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank (e.g. a time-stamped output path)."""
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not info.enabled:
        return [obj]
    gathered: list[object] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel and/or ``torch.compile`` wrapper (or the model itself).

    Its state-dict keys carry no ``module.`` / ``_orig_mod.`` prefix, so what is saved from it loads
    into a plain model.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
