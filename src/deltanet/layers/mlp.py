"""The SwiGLU feed-forward network of Transformer++ blocks (Shazeer, 2020, "GLU Variants Improve
Transformer")."""

from __future__ import annotations

import torch
from torch import nn

from deltanet.ops.swiglu import swiglu


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases. [..., hidden_size] -> [..., hidden_size]."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))  # one fused kernel on the GPU
