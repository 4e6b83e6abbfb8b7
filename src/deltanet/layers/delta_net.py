"""The DeltaNet token mixer (Yang et al., 2024, "Parallelizing Linear Transformers with the Delta Rule
over Sequence Length").

Per head, with L2-normalised q_t, k_t and a write strength beta_t = sigmoid(w_beta . x_t):

    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,      o_t = S_t^T q_t / sqrt(D)

so S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T: the transition has eigenvalues 1 and
1 - beta_t. With allow_neg_eigval, beta_t = 2 sigmoid(.) in (0, 2) and 1 - beta_t ranges over (-1, 1).
Prefill and training use the chunkwise op; a single-token step uses the token-by-token recurrence.
"""

from __future__ import annotations

import torch
from torch import nn

from deltanet.layers.precision import compute_dtype
from deltanet.layers.recurrent_mixer import LinearRecurrentMixer
from deltanet.layers.sequence_info import SequenceInfo
from deltanet.ops import chunk_delta_rule, recurrent_delta_rule


class DeltaNet(LinearRecurrentMixer):
    """DeltaNet mixer: the shared frame of LinearRecurrentMixer with the delta rule as recurrence.

    Args (besides LinearRecurrentMixer's):
        allow_neg_eigval: beta = 2 sigmoid(.) instead of sigmoid(.).
        chunk_size: tokens per chunk of the chunkwise op (a power of two).
        allow_tf32: Triton backend, float32 tensors: products in tf32 (default) or full float32.
    """

    extra_projection_names = ("b",)  # beta's logits come out of the q|k|v matmul when it is fused

    def __init__(
        self,
        *args,
        allow_neg_eigval: bool = False,
        chunk_size: int = 64,
        allow_tf32: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.allow_neg_eigval, self.chunk_size = allow_neg_eigval, chunk_size
        self.allow_tf32 = allow_tf32
        self.b_proj = nn.Linear(self.hidden_size, self.num_heads, bias=False)

    def write_strength(self, hidden_states: torch.Tensor, info: SequenceInfo,
                       logits: torch.Tensor | None = None) -> torch.Tensor:
        """beta [B, T, H] in float32 (float64 for float64 models): sigmoid, or 2 sigmoid, of a per-head
        projection (logits: its output when the frame computed it with q, k and v); 0 at padding. Kept out of
        bf16, whose 8-bit mantissa would quantise write strengths."""
        if logits is None:
            logits = self.b_proj(hidden_states)
        beta = torch.sigmoid(logits.to(compute_dtype(hidden_states)))
        if self.allow_neg_eigval:
            beta = 2 * beta
        if info.token_mask is not None:
            beta = beta * info.token_mask[..., None]  # beta = 0 leaves the state untouched at padding
        return beta

    def recurrence(self, q, k, v, hidden_states, info, initial_state, output_final_state, projected):
        beta = self.write_strength(hidden_states, info, projected.get("b"))
        if q.shape[1] == 1 and not info.is_packed:
            return recurrent_delta_rule(
                q, k, v, beta,
                initial_state=initial_state,
                output_final_state=output_final_state,
                use_qk_l2norm=False,  # the frame normalised q and k
            )  # fmt: skip
        return chunk_delta_rule(
            q, k, v, beta,
            initial_state=initial_state,
            output_final_state=output_final_state,
            cu_seqlens=info.cu_seqlens,
            chunk_size=self.chunk_size,
            backend=self.backend,
            use_qk_l2norm=False,  # the frame normalised q and k
            allow_tf32=self.allow_tf32,
        )  # fmt: skip
