"""Which dtype the numerically sensitive parts of the layers compute in.

Norm statistics, rotary angles and the recurrences run in float32 when the model runs in bf16 or fp16
(sums of squares and long products lose too much in 8 bits of mantissa); a float64 model stays in
float64 throughout, so that it can serve as the reference in tests.
"""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for low-precision inputs and float32 itself; float64 kept for float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
