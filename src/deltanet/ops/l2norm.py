"""L2 normalisation of the last dimension, as used for DeltaNet queries and keys."""

from __future__ import annotations

import torch

from deltanet.ops.backends import resolve_backend


def l2_normalize(x: torch.Tensor, eps: float = 1e-6, backend: str | None = None) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, computed in float32 (or float64), returned in x's dtype.

    The eps is inside the square root so that the gradient stays finite at x = 0.

    Args:
        x: [..., D], any float dtype.
        eps: added to the sum of squares.
        backend: None (Triton for CUDA tensors that are not float64, else PyTorch), "torch" or "triton"
            (one fused kernel each way, ops/triton/row_norm.py).
    """
    backend = resolve_backend(backend, x)
    if backend == "triton":
        from deltanet.ops.triton.row_norm import row_norm_triton

        return row_norm_triton(x, None, None, 1.0, eps, x.dtype)
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute_dtype)
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)
