"""RMSNorm, and the gated RMSNorm used on the output heads of DeltaNet with an output gate."""

from __future__ import annotations

import torch
from torch import nn

from deltanet.ops.rms_norm import rms_norm


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for x's device (the next projection reads the norm's output in
    it, so writing it there saves a cast), else x's dtype."""
    if x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dim (Zhang & Sennrich, 2019).

    Statistics are computed in float32 (float64 for float64 input), since bf16 sums of squares lose
    precision; one fused kernel each way on the GPU (deltanet.ops.rms_norm). Input [..., dim] -> output
    [..., dim] in the input's dtype, or, with autocast_output (the default) and autocast on, in the autocast
    dtype: right before a projection, which would cast it anyway. A norm whose output is returned to the
    user (the model's final norm) passes autocast_output=False.
    """

    def __init__(self, dim: int, eps: float = 1e-6, autocast_output: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.autocast_output = autocast_output
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = output_dtype(x) if self.autocast_output else x.dtype
        return rms_norm(x, self.weight, self.eps, out_dtype=out_dtype)


class GatedRMSNorm(RMSNorm):
    """y = RMSNorm(x) * silu(gate): the output gate of gated DeltaNet-style heads.

    x and gate are [..., dim] of the same shape; the output has x's dtype (the autocast dtype under autocast).
    """

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out_dtype = output_dtype(x) if self.autocast_output else x.dtype
        return rms_norm(x, self.weight, self.eps, gate=gate, out_dtype=out_dtype)
