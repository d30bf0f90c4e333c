"""Exponential moving average of weights (diffusers' ``EMAModel`` rule, as pure functions)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, max_decay: float) -> float:
    """Decay at optimizer step ``step``: ``min(max_decay, (1 + step) / (10 + step))``.

    The warm-up keeps the average from being dominated by the first, random-ish weights
    (diffusers ``EMAModel(use_ema_warmup=False)``'s default schedule).
    """
    return min(max_decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, decay: float) -> None:
    """``average ← decay · average + (1 − decay) · model``, parameters and float buffers, in place."""
    pairs = [
        (a, m)
        for a, m in zip(
            [*average.parameters(), *average.buffers()], [*model.parameters(), *model.buffers()], strict=True
        )
        if a.is_floating_point()
    ]
    torch._foreach_lerp_([a for a, _ in pairs], [m.detach().to(a.dtype) for a, m in pairs], 1.0 - decay)
