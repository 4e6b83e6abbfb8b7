"""RMSNorm, and the gated RMSNorm used on the output heads of DeltaNet with an output gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deltanet.layers.precision import compute_dtype


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dim (Zhang & Sennrich, 2019).

    Statistics are computed in float32 (float64 for float64 input), since bf16 sums of squares lose
    precision; the result is cast back to the input dtype. Input [..., dim] -> output [..., dim].
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x) * weight, in float32 (float64 for float64 input)."""
        wide = x.to(compute_dtype(x))
        return (
            wide * torch.rsqrt(wide.square().mean(-1, keepdim=True) + self.eps) * self.weight.to(wide.dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """y = RMSNorm(x) * silu(gate): the output gate of gated DeltaNet-style heads.

    x and gate are [..., dim] of the same shape; the output has x's dtype.
    """

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (self.normalize(x) * F.silu(gate.to(compute_dtype(x)))).to(x.dtype)
