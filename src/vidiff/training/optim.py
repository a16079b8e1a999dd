"""The optimizer every stage uses: AdamW with a linear warm-up to a constant learning rate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from diffusers.optimization import get_constant_schedule_with_warmup


def adamw_with_warmup(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, betas: Sequence[float], warmup_steps: int
) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW, stepped LR schedule (warm-up, then constant)."""
    optimizer = torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    schedule = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=max(0, int(warmup_steps)))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
