"""The gate of a SwiGLU feed-forward network as a function on tensors: silu(gate) * up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltanet.ops.backends import check_triton_dtype, resolve_backend


def swiglu(gate: torch.Tensor, up: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """silu(gate) * up, elementwise (Shazeer, 2020, "GLU Variants Improve Transformer").

    Args:
        gate, up: the same shape and dtype (any float dtype).
        backend: None (Triton for CUDA tensors that are not float64, else PyTorch), "torch" or "triton"
            (one fused kernel each way, float32 arithmetic, ops/triton/swiglu.py).

    Returns:
        A tensor of up's shape and dtype. Gradients flow to gate and up.
    """
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"gate and up must have the same shape and dtype, got gate {gate.dtype} "
                         f"{tuple(gate.shape)} and up {up.dtype} {tuple(up.shape)}")
    backend = resolve_backend(backend, up)
    if backend == "triton":
        check_triton_dtype(up, "gate and up")
        from deltanet.ops.triton.swiglu import swiglu as swiglu_triton

        return swiglu_triton(gate.contiguous(), up.contiguous())
    return F.silu(gate) * up
