"""DeltaNet's q, k, v features from their fused projection, in one op:

    y = silu(causal_conv1d(qkv, weight))            over all 3 H D channels (short conv, width W)
    q, k, v = y split in three thirds, each viewed as [B, T, H, D]
    q, k = q / sqrt(|q|^2 + eps), k / sqrt(|k|^2 + eps)    per head (normalize_qk)

The layers compute qkv with one matmul against the concatenated q, k and v projections (when those are plain
linear layers), beta's included (passed through); this op then replaces three conv passes and two L2-norm
passes (on the GPU one launch forward and one or two backward, ops/triton/qkv_features.py). The PyTorch path
below is the specification the kernels are tested against.
"""

from __future__ import annotations

import torch

from deltanet.ops.backends import resolve_backend
from deltanet.ops.short_conv import causal_conv1d_torch, check_short_conv_inputs, document_positions
from deltanet.ops.validation import shape_str

MAX_HEAD_DIM = 256  # a Triton program holds a whole head: [BLOCK_T, D] float32 tiles


def qkv_features_torch(qkv, weight, doc_position, num_heads: int, normalize_qk: bool, eps: float):
    """PyTorch form: conv, SiLU and norms in float32 (float64 for float64 qkv), rounded once at the end.
    -> q, k, v and the channels of qkv after the first weight.shape[0] (as they are)."""
    B, T, _ = qkv.shape
    C = weight.shape[0]
    compute_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    y = causal_conv1d_torch(qkv[..., :C], weight, doc_position, "silu", out_dtype=compute_dtype)
    features = list(y.view(B, T, 3, num_heads, C // (3 * num_heads)).unbind(2))
    if normalize_qk:
        for i in (0, 1):
            features[i] = features[i] * torch.rsqrt(features[i].square().sum(-1, keepdim=True) + eps)
    passed = qkv[..., C:].clone(memory_format=torch.contiguous_format)  # a copy, as the Triton path returns
    return (*(f.to(qkv.dtype).contiguous() for f in features), passed)


def qkv_features(
    qkv: torch.Tensor,
    weight: torch.Tensor,
    num_heads: int,
    cu_seqlens: torch.Tensor | None = None,
    normalize_qk: bool = True,
    eps: float = 1e-6,
    backend: str | None = None,
    passthrough: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Short causal conv + SiLU over the fused q|k|v projection, then per-head L2 norm of q and k.

    Args:
        qkv: [B, T, 3 * H * D + passthrough], the q, k and v projections side by side (q first), then
            `passthrough` channels of other projections; float64, float32, bfloat16 or float16.
        weight: conv taps [3 * H * D, W], 1 <= W <= 8 (the three convs' [C, 1, W] weights squeezed and
            concatenated); weight[:, W - 1] multiplies the current token.
        num_heads: H; the head dim D = (qkv.shape[-1] - passthrough) / (3 H) (at most 256 on the Triton
            backend).
        cu_seqlens: int32/int64 [N + 1] cumulative lengths of documents packed along T (B = 1); the conv
            restarts at every document start. None: each batch row is one sequence.
        normalize_qk: L2-normalise each head of q and k (not v): x / sqrt(sum(x^2) + eps).
        eps: added to the sum of squares (inside the square root: gradients stay finite at 0).
        backend: None (Triton for CUDA tensors that are not float64), "torch" or "triton".
        passthrough: E, the number of trailing channels of qkv that are not features (for example the
            DeltaNet layer's beta logits, computed by the same matmul): returned unchanged as a fourth
            output, a contiguous copy [B, T, E], with their gradient passed back into qkv's. Lets one
            matmul feed several consumers without a split, whose backward would copy the whole gradient
            once more.

    Returns:
        q, k, v, each [B, T, H, D] contiguous in qkv's dtype, and with passthrough > 0 the passed-through
        channels [B, T, E]. Both backends compute in float32 (PyTorch in float64 for float64 input) and round
        once; gradients flow to qkv and weight.
    """
    if not isinstance(passthrough, int) or passthrough < 0:
        raise ValueError(f"passthrough must be an int >= 0, got {passthrough!r}")
    features_in = qkv  # the channels the conv reads (a view, for validation)
    if passthrough:
        if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3 or qkv.shape[-1] <= passthrough:
            shape = shape_str(qkv) if isinstance(qkv, torch.Tensor) else type(qkv).__name__
            raise ValueError(f"qkv must have shape [B, T, 3 * num_heads * head_dim + passthrough] with "
                             f"passthrough={passthrough}, got {shape}")
        features_in = qkv[..., :-passthrough]
    check_short_conv_inputs(features_in, weight, cu_seqlens, "silu",
                            x_name="qkv" if not passthrough else f"qkv[..., :-{passthrough}]")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if features_in.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv's last dim must be 3 * num_heads * head_dim + passthrough, got qkv "
                         f"{shape_str(qkv)} with num_heads={num_heads}, passthrough={passthrough}")
    backend = resolve_backend(backend, qkv)
    head_dim = features_in.shape[-1] // (3 * num_heads)
    if backend == "triton" and head_dim > MAX_HEAD_DIM:
        raise ValueError(f"backend='triton' takes head_dim at most {MAX_HEAD_DIM} (as the delta-rule op), "
                         f"got {head_dim} from qkv {shape_str(qkv)} with num_heads={num_heads}")
    doc_position = None if cu_seqlens is None else document_positions(cu_seqlens, qkv.shape[1])
    if backend == "triton":
        from deltanet.ops.triton.qkv_features import qkv_features_triton

        outputs = qkv_features_triton(qkv, weight, doc_position, num_heads, normalize_qk, eps)
    else:
        outputs = qkv_features_torch(qkv, weight, doc_position, num_heads, normalize_qk, eps)
    return outputs if passthrough else outputs[:3]
