"""Delta-rule operators: plain functions on tensors, no nn.Module.

`recurrent_delta_rule` is the token-by-token specification; `chunk_delta_rule` is the chunkwise
parallel form used for training and prefill, with a PyTorch backend everywhere and Triton kernels on
GPUs. Layout and names follow flash-linear-attention: q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H].
`causal_conv1d` is the short causal depthwise convolution (with optional SiLU) applied to q, k and v;
`qkv_features` is that conv, SiLU and the L2 norm of q and k in one pass over the fused q|k|v projection;
`rms_norm`, `l2_normalize`, `swiglu` and `cross_entropy` are the fused row-wise pieces around it in a model.
"""

from deltanet.ops.chunk import chunk_delta_rule
from deltanet.ops.cross_entropy import cross_entropy
from deltanet.ops.l2norm import l2_normalize
from deltanet.ops.qkv_features import qkv_features
from deltanet.ops.recurrent import recurrent_delta_rule
from deltanet.ops.rms_norm import rms_norm
from deltanet.ops.short_conv import causal_conv1d
from deltanet.ops.swiglu import swiglu

__all__ = [
    "chunk_delta_rule", "recurrent_delta_rule", "causal_conv1d", "l2_normalize", "rms_norm", "cross_entropy",
    "swiglu", "qkv_features",
]
