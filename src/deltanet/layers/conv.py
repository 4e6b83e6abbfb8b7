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
from deltanet.ops import causal_conv1d


class ShortConvolution(nn.Module):
    """Causal depthwise conv over time, no bias, optionally followed by SiLU. weight [C, 1, W] (the F.conv1d
    layout for groups=C).

    Without a conv state it runs the fused op (deltanet.ops.causal_conv1d: one launch forward, two backward
    on the GPU), for direct users: the recurrent layers convolve q, k and v in one pass whenever they start
    from no conv state (deltanet.ops.qkv_features) and call this module only to continue from a cached state,
    which runs F.conv1d over the state and the new tokens.
    """

    def __init__(self, channels: int, kernel_size: int = 4, activation: str | None = None) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if activation not in (None, "silu"):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default bound 1/sqrt(fan_in), fan_in = W for a depthwise conv: a small-std init
        # would scale v (and, before the L2 norm, q and k) down to nearly nothing at the start.
        bound = self.kernel_size**-0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def _with_history(self, x: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, C], history [B, C, W - 1] or None (zeros) -> inputs with history, [B, C, W - 1 + T]."""
        x_bct = x.transpose(1, 2)
        if history is None:
            history = x_bct.new_zeros(x.shape[0], self.channels, self.kernel_size - 1)
        return torch.cat([history.to(x.dtype), x_bct], dim=-1)

    def state_after(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The conv state after inputs x [B, T, C] from an empty history, [B, C, W - 1]: each row's last W - 1
        real inputs (token_mask [B, T] True at real tokens; None: all real), zeros before its first. With
        right padding the state must come from the last real tokens, not from the padding after them."""
        keep = self.kernel_size - 1
        if token_mask is None:
            tail = x[:, x.shape[1] - min(keep, x.shape[1]) :]
            return self._with_history(tail, None)[..., tail.shape[1] :].contiguous()
        positions = torch.arange(x.shape[1], device=x.device)
        last = torch.where(token_mask, positions, -1).amax(dim=1)  # each row's last real token (-1: none)
        index = last[:, None] - torch.arange(keep - 1, -1, -1, device=x.device)  # [B, W - 1], oldest first
        real = (index >= 0) & token_mask.gather(1, index.clamp(min=0))
        gathered = x.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, x.shape[2]))  # [B, W - 1, C]
        return (gathered * real[..., None].to(x.dtype)).transpose(1, 2).contiguous()

    def forward(
        self,
        x: torch.Tensor,
        info: SequenceInfo,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Convolve x [B, T, C] causally (then apply the activation).

        Args:
            x: inputs [B, T, C], any float dtype; taps and sums in float32 (float64 for float64 x).
            info: token layout; padding (token_mask False) and packed documents are honoured.
            state: [B, C, W - 1], the last W - 1 inputs before x (decoding); None means zeros.
            return_state: also return the last W - 1 inputs including x, for the next step.

        Returns:
            y [B, T, C] in x's dtype, and the new state [B, C, W - 1] or None.
        """
        if info.is_packed and (state is not None or return_state):
            raise ValueError("conv state cannot be carried across packed documents (cu_seqlens)")
        if info.token_mask is not None:
            # Padding reads as zero input: a left-padded row then matches the same row unpadded.
            x = x * info.token_mask[..., None].to(x.dtype)
        if state is None:
            y = causal_conv1d(x, self.weight[:, 0], cu_seqlens=info.cu_seqlens, activation=self.activation)
            return y, (self.state_after(x, info.token_mask) if return_state else None)
        keep = self.kernel_size - 1
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32  # as the fused op computes
        padded_bct = self._with_history(x, state)
        with torch.autocast(x.device.type, enabled=False):  # conv1d is on autocast's low-precision list
            y = F.conv1d(padded_bct.to(wide), self.weight.to(wide), groups=self.channels).transpose(1, 2)
        if self.activation == "silu":
            y = F.silu(y)
        new_state = padded_bct[..., padded_bct.shape[-1] - keep :].clone() if return_state else None
        return y.to(x.dtype), new_state  # clone above: the state must not pin the whole prefill
