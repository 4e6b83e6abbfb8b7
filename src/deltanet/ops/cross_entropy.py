"""Mean next-token cross-entropy over a large vocabulary, without a float32 copy of the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltanet.ops.backends import check_triton_dtype, resolve_backend


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, backend: str | None = None
) -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over the rows whose target is not ignore_index.

    Computed in float32 (float64 for float64 logits) on both paths. The Triton path reads bf16/fp16 logits
    as they are and writes their gradient in their dtype, in one pass each way (ops/triton/cross_entropy.py).

    Args:
        logits: [N, V], any float dtype.
        targets: integer [N], values in [0, V) or ignore_index. Others: IndexError on the PyTorch path; a
            NaN loss (and gradient) on the Triton path, which does not wait for the GPU to check.
        ignore_index: target value of rows that count for nothing.
        backend: None (Triton for CUDA tensors that are not float64, else PyTorch), "torch" or "triton".

    Returns:
        A float32 (float64) scalar; NaN if every row is ignored, like F.cross_entropy.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1] or targets.dtype.is_floating_point:
        raise ValueError(f"targets must be integer [N] = [{logits.shape[0]}], got {targets.dtype} "
                         f"{tuple(targets.shape)}")
    backend = resolve_backend(backend, logits)
    if backend == "triton":
        check_triton_dtype(logits, "logits")
        from deltanet.ops.triton.cross_entropy import cross_entropy_rows

        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        row_losses, _ = cross_entropy_rows(logits, targets.contiguous(), ignore_index)
        return row_losses.sum() / (targets != ignore_index).sum()
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.cross_entropy(logits.to(compute_dtype), targets, ignore_index=ignore_index)
