"""Rotary position embeddings (Su et al., 2021, "RoFormer"), in the rotate-half layout.

Channel pairs (i, i + D/2) of each head are rotated by angle position * theta^(-2i/D). Angles are
computed from the positions on every call (no buffers), in float32 (float64 for float64 models):
positions beyond 2^24 would lose integer precision in float32, far past any context used here.
"""

from __future__ import annotations

import torch


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for positions [B, T] -> two [B, T, 1, head_dim] tensors of `dtype` (1: any head)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=dtype) / head_dim)
    angles = positions.to(dtype)[..., None] * inv_freq  # [B, T, D/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # [B, T, 1, D]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by the angles of `rotary_cos_sin`; computed in cos's dtype, returned in x's."""
    wide = x.to(cos.dtype)
    first, second = wide.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return (wide * cos + rotated_half * sin).to(x.dtype)
