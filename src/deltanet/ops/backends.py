"""Which implementation an op runs on: "torch" (everywhere) or "triton" (GPU kernels)."""

from __future__ import annotations

import torch

BACKENDS = ("torch", "triton")


def default_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The fastest backend: Triton for CUDA tensors (not float64) where Triton imports, else PyTorch."""
    if device.type == "cuda" and dtype != torch.float64:
        try:
            import triton  # noqa: F401  (the kernels need it; it does not install everywhere)
        except ImportError:
            return "torch"
        return "triton"
    return "torch"


def check_triton_dtype(v: torch.Tensor) -> None:
    """The Triton kernels take float32, bfloat16 and float16; float64 stays on the PyTorch path."""
    if v.dtype == torch.float64:
        raise TypeError("backend='triton' takes float32, bfloat16 or float16 inputs, got v float64; "
                        "use backend='torch' for float64")
