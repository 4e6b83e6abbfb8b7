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


def check_triton_dtype(tensor: torch.Tensor, name: str) -> None:
    """The Triton kernels take float32, bfloat16 and float16; float64 stays on the PyTorch path. name: the
    argument's name in the caller's signature, for the error."""
    if tensor.dtype == torch.float64:
        raise TypeError(f"backend='triton' takes float32, bfloat16 or float16 {name}, got float64; "
                        "use backend='torch' for float64")


def resolve_backend(backend: str | None, x: torch.Tensor) -> str:
    """The backend an op runs on: `backend` itself if valid, or the fastest for x's device and dtype."""
    if backend is None:
        return default_backend(x.device, x.dtype)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    return backend
