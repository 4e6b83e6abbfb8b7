"""DeltaNet's q, k, v features from their fused projection, in one op:

    y = silu(causal_conv1d(qkv, weight))            over all 3 H D channels (short conv, width W)
    q, k, v = y split in three thirds, each viewed as [B, T, H, D]
    q, k = q / sqrt(|q|^2 + eps), k / sqrt(|k|^2 + eps)    per head (normalize_qk)

The layers compute qkv with one matmul against the concatenated q, k and v projections (when those are plain
linear layers); this op then
replaces three conv passes and two L2-norm passes (on the GPU one launch forward and two backward,
ops/triton/qkv_features.py). The PyTorch path below is the specification the kernels are tested against.
"""

from __future__ import annotations

import torch

from deltanet.ops.backends import resolve_backend
from deltanet.ops.short_conv import causal_conv1d_torch, check_short_conv_inputs, document_positions
from deltanet.ops.validation import shape_str

MAX_HEAD_DIM = 256  # a Triton program holds a whole head: [BLOCK_T, D] float32 tiles


def qkv_features_torch(qkv, weight, doc_position, num_heads: int, normalize_qk: bool, eps: float):
    """PyTorch form: conv, SiLU and norms in float32 (float64 for float64 qkv), rounded once at the end."""
    B, T, C = qkv.shape
    compute_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    y = causal_conv1d_torch(qkv, weight, doc_position, "silu", out_dtype=compute_dtype)
    features = list(y.view(B, T, 3, num_heads, C // (3 * num_heads)).unbind(2))
    if normalize_qk:
        for i in (0, 1):
            features[i] = features[i] * torch.rsqrt(features[i].square().sum(-1, keepdim=True) + eps)
    return tuple(f.to(qkv.dtype).contiguous() for f in features)


def qkv_features(
    qkv: torch.Tensor,
    weight: torch.Tensor,
    num_heads: int,
    cu_seqlens: torch.Tensor | None = None,
    normalize_qk: bool = True,
    eps: float = 1e-6,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Short causal conv + SiLU over the fused q|k|v projection, then per-head L2 norm of q and k.

    Args:
        qkv: [B, T, 3 * H * D], the q, k and v projections side by side (q first); float64, float32,
            bfloat16 or float16.
        weight: conv taps [3 * H * D, W], 1 <= W <= 8 (the three convs' [C, 1, W] weights squeezed and
            concatenated); weight[:, W - 1] multiplies the current token.
        num_heads: H; the head dim D = qkv.shape[-1] / (3 H) (at most 256 on the Triton backend).
        cu_seqlens: int32/int64 [N + 1] cumulative lengths of documents packed along T (B = 1); the conv
            restarts at every document start. None: each batch row is one sequence.
        normalize_qk: L2-normalise each head of q and k (not v): x / sqrt(sum(x^2) + eps).
        eps: added to the sum of squares (inside the square root: gradients stay finite at 0).
        backend: None (Triton for CUDA tensors that are not float64), "torch" or "triton".

    Returns:
        q, k, v, each [B, T, H, D] contiguous in qkv's dtype. Both backends compute in float32 (PyTorch in
        float64 for float64 input) and round once; gradients flow to qkv and weight.
    """
    check_short_conv_inputs(qkv, weight, cu_seqlens, "silu", x_name="qkv")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv's last dim must be 3 * num_heads * head_dim, got qkv {shape_str(qkv)} "
                         f"with num_heads={num_heads}")
    backend = resolve_backend(backend, qkv)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if backend == "triton" and head_dim > MAX_HEAD_DIM:
        raise ValueError(f"backend='triton' takes head_dim at most {MAX_HEAD_DIM} (as the delta-rule op), "
                         f"got {head_dim} from qkv {shape_str(qkv)} with num_heads={num_heads}")
    doc_position = None if cu_seqlens is None else document_positions(cu_seqlens, qkv.shape[1])
    if backend == "triton":
        from deltanet.ops.triton.qkv_features import qkv_features_triton

        return qkv_features_triton(qkv, weight, doc_position, num_heads, normalize_qk, eps)
    return qkv_features_torch(qkv, weight, doc_position, num_heads, normalize_qk, eps)
