"""Softmax attention with rotary embeddings: global causal, or causal within a sliding window.

Used for the attention layers of the hybrids and for the Transformer++ baseline. The kernel is picked
per call: PyTorch SDPA with is_causal (flash attention on GPUs) when only causality applies;
FlexAttention with a block mask on CUDA for long masked sequences (sliding window, packed documents,
padding), which skips fully masked blocks and needs no flash_attn package; SDPA with a dense boolean
mask otherwise (CPU, decoding against a cache). The rule itself is in attention_masks.py.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deltanet.layers.attention_masks import dense_attention_mask, flex_block_mask, only_causal
from deltanet.layers.cache_entries import KVCacheEntry
from deltanet.layers.mixer import TokenMixer
from deltanet.layers.precision import compute_dtype
from deltanet.layers.rotary import apply_rotary, rotary_cos_sin
from deltanet.layers.sequence_info import SequenceInfo


@functools.cache
def _compiled_flex_attention():
    """FlexAttention compiled once per process; uncompiled it materialises the full score matrix."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> torch.Tensor:
    """FlexAttention on [B, H, T, D]: compiled on CUDA; eager elsewhere (slow, used to test the masks)."""
    if q.is_cuda:
        return _compiled_flex_attention()(q, k, v, block_mask=block_mask)
    from torch.nn.attention.flex_attention import flex_attention as eager_flex_attention

    return eager_flex_attention(q, k, v, block_mask=block_mask)


class Attention(TokenMixer):
    """Multi-head causal softmax attention with RoPE, optionally within a sliding window.

    Args:
        hidden_size: model width D_model.
        num_heads, head_dim: H heads of size D (D even, for rotary embeddings).
        layer_idx: index of this layer in the model (its cache entry).
        window: None for global attention; W for a sliding window: each query sees itself and the
            W - 1 tokens before it, and the cache keeps only W - 1 tokens.
        rope_theta: rotary base.
        use_flex: None picks FlexAttention on CUDA for masked sequences; True/False forces it on or off.
    """

    cache_entry_type = KVCacheEntry

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        layer_idx: int,
        window: int | None = None,
        rope_theta: float = 10000.0,
        use_flex: bool | None = None,
    ) -> None:
        super().__init__(layer_idx)
        if window is not None and window < 1:
            raise ValueError(f"window must be None or >= 1, got {window}")
        self.num_heads, self.head_dim = num_heads, head_dim
        self.window, self.rope_theta, self.use_flex = window, rope_theta, use_flex
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def new_cache_entry(self) -> KVCacheEntry:
        return KVCacheEntry(window=self.window)

    def forward(
        self, hidden_states: torch.Tensor, info: SequenceInfo, cache: Any | None = None
    ) -> torch.Tensor:
        """hidden_states [B, T, hidden_size] -> [B, T, hidden_size]; appends this call's keys to the cache."""
        batch, seq_len, _ = hidden_states.shape
        heads_shape = (batch, seq_len, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(heads_shape)
        k = self.k_proj(hidden_states).view(heads_shape)
        v = self.v_proj(hidden_states).view(heads_shape)
        angle_dtype = compute_dtype(q)
        cos, sin = info.memo(
            ("rotary", self.head_dim, self.rope_theta, angle_dtype),
            lambda: rotary_cos_sin(info.positions, self.head_dim, self.rope_theta, angle_dtype),
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]

        key_mask, num_past = info.token_mask, 0
        entry = self.cache_entry(cache)
        if entry is not None:
            num_past = entry.get_seq_length()
            k, v, key_mask = entry.update(k, v, key_mask)  # [B, H, L + T, D], [B, L + T]
        out = self._attend(q, k, v, info, num_past, key_mask)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))

    def _flex_enabled(self, q: torch.Tensor) -> bool:
        return q.is_cuda if self.use_flex is None else self.use_flex

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        info: SequenceInfo,
        num_past: int,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """q [B, H, T, D], k and v [B, H, L + T, D] -> [B, H, T, D]."""
        num_queries = q.shape[2]
        document_ids = info.document_layout()[0] if info.is_packed else None
        masked = document_ids is not None or key_mask is not None
        if only_causal(num_queries, num_past, self.window, masked):
            # bool(): under torch.compile with dynamic shapes the comparison is a SymBool, which SDPA rejects.
            is_causal = bool(num_past == 0 and num_queries > 1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        # Masks depend only on (window, num_past) within one forward: every layer sees the same tokens.
        if num_past == 0 and self._flex_enabled(q):
            block_mask = info.memo(
                ("flex_mask", self.window),
                lambda: flex_block_mask(num_queries, self.window, document_ids, key_mask, q.device),
            )
            return flex_attention(q, k, v, block_mask)
        mask = info.memo(
            ("dense_mask", self.window, num_past),
            lambda: dense_attention_mask(
                num_queries, num_past, self.window, document_ids, key_mask, q.device
            ),
        )
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
