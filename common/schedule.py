"""Learning-rate schedule shared by both pipelines."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.02) -> float:
    """LR multiplier at optimiser step `step`: linear warm-up to 1, then cosine decay to `min_ratio`.

    Warm-up keeps Adam's early, badly-estimated second moments from throwing the weights far off;
    the cosine tail lets the last epochs settle (and the EMA average a quiet stretch).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, peak_lr: float, step: int, total_steps: int, warmup_steps: int) -> None:
    """Set every parameter group's learning rate to peak_lr x warmup_cosine(step, ...)."""
    lr = peak_lr * warmup_cosine(step, total_steps, warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
