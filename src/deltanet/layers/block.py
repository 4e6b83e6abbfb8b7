"""The pre-norm Transformer++ block: x + mixer(RMSNorm(x)), then + SwiGLU(RMSNorm(.))."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deltanet.layers.mixer import TokenMixer
from deltanet.layers.mlp import SwiGLU
from deltanet.layers.norm import RMSNorm
from deltanet.layers.sequence_info import SequenceInfo


class TransformerBlock(nn.Module):
    """One layer of the model around any token mixer (DeltaNet, linear attention, softmax attention).

    Args:
        mixer: the token mixer; its layer_idx is this block's.
        hidden_size, intermediate_size: widths of the residual stream and of the SwiGLU.
        norm_eps: epsilon of both RMSNorms.
    """

    def __init__(
        self, mixer: TokenMixer, hidden_size: int, intermediate_size: int, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(hidden_size, eps=norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(hidden_size, eps=norm_eps)
        self.mlp = SwiGLU(hidden_size, intermediate_size)

    def forward(
        self, hidden_states: torch.Tensor, info: SequenceInfo, cache: Any | None = None
    ) -> torch.Tensor:
        """hidden_states [B, T, hidden_size] -> [B, T, hidden_size]."""
        hidden_states = hidden_states + self.mixer(self.mixer_norm(hidden_states), info, cache)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))
