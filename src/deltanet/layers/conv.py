"""The causal depthwise short convolution applied to DeltaNet's q, k and v (width 4 by default).

y_t[c] = sum_{i < W} w[c, W - 1 - i] * x_{t - i}[c]: each channel mixes its own last W inputs. For
decoding, the last W - 1 inputs are the conv state, kept in the layer's cache entry. Inputs before a
sequence start, at padding and across packed-document boundaries count as zeros, so nothing leaks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deltanet.layers.sequence_info import SequenceInfo


class ShortConvolution(nn.Module):
    """Causal depthwise conv over time, no bias. weight [C, 1, W] (the F.conv1d layout for groups=C)."""

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default bound 1/sqrt(fan_in), fan_in = W for a depthwise conv: a small-std init
        # would scale v (and, before the L2 norm, q and k) down to nearly nothing at the start.
        bound = self.kernel_size**-0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def _conv_with_history(self, x: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, C], history [B, C, W - 1] or None (zeros) -> inputs with history, [B, C, W - 1 + T]."""
        x_bct = x.transpose(1, 2)
        if history is None:
            history = x_bct.new_zeros(x.shape[0], self.channels, self.kernel_size - 1)
        return torch.cat([history.to(x.dtype), x_bct], dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        info: SequenceInfo,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Convolve x [B, T, C] causally.

        Args:
            x: inputs [B, T, C], any float dtype (the weight is used in x's dtype).
            info: token layout; padding (token_mask False) and packed documents are honoured.
            state: [B, C, W - 1], the last W - 1 inputs before x (decoding); None means zeros.
            return_state: also return the last W - 1 inputs including x, for the next step.

        Returns:
            y [B, T, C] in x's dtype, and the new state [B, C, W - 1] or None.
        """
        if info.token_mask is not None:
            # Padding reads as zero input: a left-padded row then matches the same row unpadded.
            x = x * info.token_mask[..., None].to(x.dtype)
        weight = self.weight.to(x.dtype)
        if info.is_packed:
            if state is not None or return_state:
                raise ValueError("conv state cannot be carried across packed documents (cu_seqlens)")
            # Each document left-aligned in its own row, so its first W - 1 outputs see only zeros before it.
            padded_bct = self._conv_with_history(info.unpack_documents(x), None)
            y = F.conv1d(padded_bct, weight, groups=self.channels).transpose(1, 2)
            return info.repack_documents(y), None

        padded_bct = self._conv_with_history(x, state)
        y = F.conv1d(padded_bct, weight, groups=self.channels).transpose(1, 2)  # [B, T, C]
        new_state = None
        if return_state:
            keep = self.kernel_size - 1
            new_state = padded_bct[..., padded_bct.shape[-1] - keep :].clone()  # clone: don't pin the prefill
        return y, new_state
