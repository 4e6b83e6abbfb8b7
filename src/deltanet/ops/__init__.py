"""Delta-rule operators: plain functions on tensors, no nn.Module.

`recurrent_delta_rule` is the token-by-token specification; `chunk_delta_rule` is the chunkwise
parallel form used for training and prefill, with a PyTorch backend everywhere and Triton kernels on
GPUs. Layout and names follow flash-linear-attention: q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H].
"""

from deltanet.ops.chunk import chunk_delta_rule
from deltanet.ops.l2norm import l2_normalize
from deltanet.ops.recurrent import recurrent_delta_rule

__all__ = ["chunk_delta_rule", "recurrent_delta_rule", "l2_normalize"]
