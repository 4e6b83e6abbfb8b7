"""RMSNorm as a function on tensors, with the optional SiLU output gate of gated DeltaNet heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltanet.ops.backends import resolve_backend


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float = 1e-6,
    gate: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight [* silu(gate)] over the last dim (Zhang & Sennrich, 2019).

    Statistics and products are computed in float32 (float64 for float64 x): bf16 sums of squares lose
    precision. Gradients flow to x, weight and gate.

    Args:
        x: [..., D], any float dtype.
        weight: [D] or None (no scale).
        eps: added to the mean square.
        gate: None, or a tensor of x's shape: the output is multiplied by silu(gate).
        out_dtype: dtype of y; None means x's dtype. Under autocast, pass the autocast dtype so that the
            projection that follows reads y without a cast.
        backend: None (Triton for CUDA tensors that are not float64, else PyTorch), "torch" or "triton"
            (one fused kernel each way, ops/triton/row_norm.py).

    Returns:
        y [..., D] in out_dtype.
    """
    dim = x.shape[-1]
    if weight is not None and weight.shape != (dim,):
        raise ValueError(f"weight must have shape ({dim},) (x's last dim), got {tuple(weight.shape)}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"gate must have x's shape {tuple(x.shape)}, got {tuple(gate.shape)}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    backend = resolve_backend(backend, x)
    if backend == "triton":
        from deltanet.ops.triton.row_norm import row_norm_triton

        return row_norm_triton(x, weight, gate, 1.0 / dim, eps, out_dtype)
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    wide = x.to(compute_dtype)
    y = wide * torch.rsqrt(wide.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(compute_dtype)
    if gate is not None:
        y = y * F.silu(gate.to(compute_dtype))
    return y.to(out_dtype)
