"""Which implementation an op runs on: "torch" (everywhere) or "triton" (GPU kernels)."""

from __future__ import annotations

import torch

BACKENDS = ("torch", "triton")


def default_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The fastest backend: Triton for CUDA tensors (not float64) where its kernels import, else PyTorch."""
    if device.type == "cuda" and dtype != torch.float64:
        try:
            import deltanet.ops.triton  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    return "torch"
