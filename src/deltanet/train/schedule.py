"""The learning-rate schedule of the paper's recipe: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """The learning rate of optimizer step `step` (1-based) as a fraction of the peak.

    Steps 1..warmup_steps rise linearly to 1 (step / warmup_steps); the rest follow half a cosine from 1 at
    step warmup_steps down to min_ratio at step total_steps (min_ratio after that).
    """
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
