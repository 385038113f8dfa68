"""Per-stage summary of a model: output shape, parameters, FLOPs, attention size."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.mhsa import MHSA2d
from .network import STAGE_NAMES, BoTNet

__all__ = ["StageSummary", "summarize"]


@dataclass
class StageSummary:
    """One row: ``flops`` counts multiply and add separately (2 per MAC)."""

    name: str
    out_shape: tuple[int, ...]
    params: int
    flops: int
    attention_positions: list[int] = field(default_factory=list)


def _parts(model: BoTNet) -> list[tuple[str, nn.Module, callable]]:
    stem = nn.Sequential(model.conv1, model.bn1, model.act, model.maxpool)
    parts: list[tuple[str, nn.Module, callable]] = [("stem", stem, stem)]
    parts += [(name, stage, stage) for name, stage in zip(STAGE_NAMES, model.stages)]
    head_modules = nn.ModuleList([model.global_pool, model.drop, model.fc])
    parts.append(("head", head_modules, model.forward_head))
    return parts


@torch.no_grad()
def summarize(model: BoTNet, img_size: tuple[int, int] = (224, 224)) -> list[StageSummary]:
    """Run one (1, C, H, W) image through ``model`` stage by stage and describe each.

    ``attention_positions`` lists, for each MHSA layer of a stage, the number
    of positions N = H*W every head attends over (its logits are N x N).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, model.in_chans, *img_size)
    model.check_input(x)
    rows: list[StageSummary] = []
    try:
        for name, module, run in _parts(model):
            positions: list[int] = []
            hooks = [
                m.register_forward_pre_hook(lambda _m, args: positions.append(args[0].shape[-2] * args[0].shape[-1]))
                for m in module.modules()
                if isinstance(m, MHSA2d)
            ]
            counter = FlopCounterMode(display=False)
            with counter:
                x = run(x)
            for hook in hooks:
                hook.remove()
            params = sum(p.numel() for p in module.parameters())
            rows.append(StageSummary(name, tuple(x.shape), params, counter.get_total_flops(), positions))
    finally:
        model.train(was_training)
    return rows
