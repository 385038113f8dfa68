"""Activation (gradient) checkpointing of residual blocks, with BatchNorm statistics kept right.

A checkpointed block keeps only its input for backward and runs its forward
again there to rebuild what backward needs: training memory drops from every
block's activations to the blocks' inputs plus one block's activations at a
time, for about one extra forward of compute.

Rerunning a block in training mode runs its BatchNorms again, and each would
fold the batch statistics into its running statistics a second time (and
count the batch twice in ``num_batches_tracked``). Here the rerun is followed
by putting the block's buffers back as the first pass left them, so a
checkpointed training step gives the same outputs, gradients *and* BN
buffers as a plain one. (Switching the statistics off for the rerun would
not do: BatchNorm then saves other tensors for backward, which
``torch.utils.checkpoint`` rejects.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_blocks", "buffers_restored"]


@contextlib.contextmanager
def buffers_restored(module: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves ``module``'s buffers (BN running statistics, counters) unchanged."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _recompute_keeps_buffers(block: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    # torch.utils.checkpoint's context_fn: (context of the first forward, context of the rerun).
    return contextlib.nullcontext(), buffers_restored(block)


def checkpoint_blocks(blocks: Iterable[nn.Module], x: Tensor) -> Tensor:
    """Run ``blocks`` in order on ``x``, each under :func:`torch.utils.checkpoint.checkpoint`.

    Non-reentrant checkpointing (``use_reentrant=False``, PyTorch's
    recommended variant: it works when the input does not require grad and
    with ``torch.autograd.grad``); the RNG state is restored for the rerun.

    Shape: whatever the blocks map (B, C, H, W) to.
    """
    compiling = torch.compiler.is_compiling()
    for block in blocks:
        if compiling:
            # torch.compile takes no context_fn here; its checkpoint applies the buffer
            # updates of the traced forward once, the rerun lives in the backward graph.
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = checkpoint(
                block, x, use_reentrant=False,
                context_fn=lambda block=block: _recompute_keeps_buffers(block),
            )  # fmt: skip
    return x
