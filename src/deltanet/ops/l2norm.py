"""L2 normalisation of the last dimension, as used for DeltaNet queries and keys."""

from __future__ import annotations

import torch


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, computed in float32 (or float64), returned in x's dtype.

    The eps is inside the square root so that the gradient stays finite at x = 0.
    """
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute_dtype)
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)
