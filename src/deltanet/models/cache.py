"""DeltaNetCache: the one cache object of a model, a transformers.Cache holding one entry per layer.

DeltaNet and linear-attention layers keep a recurrent state and their conv states (constant size);
attention layers keep keys and values, at most window - 1 of them for sliding-window layers. The
entries are allocated by the layers themselves (deltanet.layers.cache_entries); this container adds
what the model needs across layers: how many tokens were seen, and per row how many were not padding
(the rotary position of the next token under left padding).

With transformers' generate(): DeltaNetForCausalLM creates this cache in its first forward (generate
passes no cache, see `_supports_default_dynamic_cache`), returns it as `outputs.cache` (transformers
>= 5.24; `outputs.past_key_values` before, see hf_compat.py), and generate hands it back on every
step. A cache built with `model.new_cache()` can also be passed as `cache=`.
"""

from __future__ import annotations

import torch
from transformers import Cache

from deltanet.layers.cache_entries import CacheEntry


class DeltaNetCache(Cache):
    """Per-layer entries plus token counts.

    Attributes:
        layers: list of CacheEntry, entry i belongs to layer i.
        num_seen_tokens: tokens processed so far per row, padding included (what generate slices by).
        valid_token_counts: int64 [B], tokens per row that were not padding; None before the first call.
    """

    def __init__(self, entries: list[CacheEntry]) -> None:
        super().__init__(layers=list(entries))
        self.num_seen_tokens = 0
        self.valid_token_counts: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"DeltaNetCache(num_seen_tokens={self.num_seen_tokens}, layers={self.layers})"

    def advance(
        self, batch_size: int, seq_len: int, token_mask: torch.Tensor | None, device: torch.device
    ) -> None:
        """Count a forward of [B, T] tokens (token_mask bool [B, T], False at padding, or None)."""
        if self.valid_token_counts is None:
            self.valid_token_counts = torch.zeros(batch_size, dtype=torch.long, device=device)
        elif self.valid_token_counts.shape[0] != batch_size:
            raise ValueError(
                f"the cache holds {self.valid_token_counts.shape[0]} rows, the input has {batch_size}"
            )
        new_valid = seq_len if token_mask is None else token_mask.sum(dim=1)
        self.valid_token_counts = self.valid_token_counts + new_valid
        self.num_seen_tokens += seq_len

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.num_seen_tokens

    @property
    def is_compileable(self) -> bool:
        # Attention entries grow; generate must not build static-shape 4D masks for this cache.
        return False

    def reset(self) -> None:
        super().reset()
        self.num_seen_tokens = 0
        self.valid_token_counts = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("DeltaNetCache cannot be cropped: recurrent states cannot be rolled back")

    # Batch operations of beam search and batch selection also apply to the per-row counts.
    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        super().reorder_cache(beam_idx)
        if self.valid_token_counts is not None:
            self.valid_token_counts = self.valid_token_counts.index_select(
                0, beam_idx.to(self.valid_token_counts.device)
            )

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.valid_token_counts is not None:
            self.valid_token_counts = self.valid_token_counts.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.valid_token_counts is not None:
            self.valid_token_counts = self.valid_token_counts[indices]
