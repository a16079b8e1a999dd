"""The optimizer every stage uses: AdamW with a linear warm-up, then a constant or a cosine-decaying learning rate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup


LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")


def make_adamw(params: list, lr: float, weight_decay: float, betas: Sequence[float], name: str = "adamw"):
    """``adamw``: torch's AdamW. ``adamw8bit``: torchao's AdamW with 8-bit moments (block-wise scaled, 256 values a
    block), a quarter of the optimizer memory."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if name == "adamw8bit":
        from torchao.optim import AdamW8bit

        return AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    raise ValueError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")


def adamw_with_warmup(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    warmup_steps: int,
    schedule: str = "constant",
    total_steps: int | None = None,
    optimizer: str = "adamw",
) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW, stepped LR schedule.

    ``constant``: warm-up, then ``lr`` (the paper's recipe). ``cosine``: warm-up, then a half cosine from ``lr`` to 0
    at ``total_steps`` optimizer steps; on a short budget the last steps average out the gradient noise of the
    final weights instead of ending on a full-size step.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r} (choose from {', '.join(LR_SCHEDULES)})")
    optimizer = make_adamw(list(params), lr, weight_decay, betas, optimizer)
    warmup = max(0, int(warmup_steps))
    if schedule == "cosine":
        if not total_steps or total_steps <= 0 or total_steps == float("inf"):
            raise ValueError("lr_schedule=cosine needs a finite number of steps: set trainer.max_steps")
        lr_schedule = get_cosine_schedule_with_warmup(optimizer, warmup, int(total_steps))
    else:
        lr_schedule = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_schedule, "interval": "step"}}
