"""The inference protocol shared by every token mixer (DeltaNet, linear attention, softmax attention).

A mixer knows its layer index, allocates its own entry in the model's one cache object, and handles
both a prefill (many tokens) and single-token decoding steps through the same `forward`:

    entry = mixer.new_cache_entry()                 # once, when the model builds its cache
    out = mixer(hidden_states, info, cache)         # cache.layers[mixer.layer_idx] is read and updated

`cache` is any object with a `layers` list (deltanet.models.cache.DeltaNetCache, a transformers.Cache);
None means no state is kept (training, or a single full forward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deltanet.layers.cache_entries import CacheEntry
from deltanet.layers.sequence_info import SequenceInfo


class TokenMixer(nn.Module):
    """Base class of the sequence-mixing half of a block; subclasses implement `forward`."""

    cache_entry_type: type[CacheEntry] = CacheEntry

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def new_cache_entry(self) -> CacheEntry:
        """An empty entry of the kind this layer reads and writes."""
        return self.cache_entry_type()

    def cache_entry(self, cache: Any | None) -> CacheEntry | None:
        """This layer's entry in the model's cache, or None without a cache."""
        if cache is None:
            return None
        entry = cache.layers[self.layer_idx]
        if not isinstance(entry, self.cache_entry_type):
            raise TypeError(
                f"cache.layers[{self.layer_idx}] must be a {self.cache_entry_type.__name__} for "
                f"{type(self).__name__}, got {type(entry).__name__}; build the cache with model.new_cache()"
            )
        return entry

    def forward(
        self, hidden_states: torch.Tensor, info: SequenceInfo, cache: Any | None = None
    ) -> torch.Tensor:
        """hidden_states [B, T, hidden_size] -> [B, T, hidden_size] in the same dtype."""
        raise NotImplementedError
