"""What one layer keeps between forward calls when decoding: its entry in the model's cache.

The model owns one cache object (deltanet.models.cache.DeltaNetCache) holding a list with one entry per
layer; each token mixer allocates its own entry (`TokenMixer.new_cache_entry`) and is the only one to
read or write it. Entries hold named tensors whose first dimension is the batch, so that beam search
and batch selection can act on every entry the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class CacheEntry:
    """Named batch-first tensors of one layer. Empty until the layer's first forward with a cache."""

    # Attributes that transformers.Cache reads from its layers.
    is_sliding = False
    is_compileable = False
    is_croppable = False  # a recurrent state cannot be rolled back to an earlier token
    supports_early_init = False

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={list(t.shape)}" for name, t in self.tensors.items())
        return f"{type(self).__name__}({shapes})"

    @property
    def is_initialized(self) -> bool:
        return bool(self.tensors)

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    def set(self, name: str, value: torch.Tensor) -> None:
        self.tensors[name] = value

    def map_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply a batch-dimension operation (select, repeat, reorder) to every tensor."""
        self.tensors = {name: fn(t) for name, t in self.tensors.items()}

    # The transformers.Cache layer interface, used by generate() for beam search and by Cache.reset.
    def reset(self) -> None:
        self.tensors.clear()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.map_batch(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} cannot be cropped: recurrent states have no history"
        )

    def offload(self) -> None:  # states are small; nothing is offloaded
        pass

    def prefetch(self) -> None:
        pass

    def get_max_length(self) -> int:
        return -1


class RecurrentCacheEntry(CacheEntry):
    """Entry of a DeltaNet or linear-attention layer; its size does not grow with the context.

    Tensors:
        "recurrent_state": float32 (float64 for float64 models) [B, H, K, V], the state after the last token.
        "conv_<name>": [B, C, W - 1], the last W - 1 inputs of the short convolution <name> (zeros before
            the first token), in the model's dtype.
    """


class KVCacheEntry(CacheEntry):
    """Entry of an attention layer: keys and values of past tokens, bounded to the window if it slides.

    Tensors:
        "keys", "values": [B, H, L, D]; L grows with the context for global attention and stays at most
            window - 1 for sliding-window attention (the next query sees itself and window - 1 keys back).
        "key_mask": bool [B, L], False at padding keys; absent while no padding has been seen.
    """

    def __init__(self, window: int | None = None) -> None:
        super().__init__()
        self.window = window
        self.is_sliding = window is not None

    def get_seq_length(self) -> int:
        keys = self.get("keys")
        return 0 if keys is None else keys.shape[2]

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append T new tokens; return every key the new queries may see.

        Args:
            keys, values: [B, H, T, D] of the new tokens.
            key_mask: bool [B, T] (False at padding) or None (no padding).

        Returns:
            keys, values [B, H, L + T, D] (L cached before) and key_mask [B, L + T] or None. Afterwards the
            entry keeps the last window - 1 tokens (sliding window) or all of them (global attention).
        """
        past_keys, past_values, past_mask = self.get("keys"), self.get("values"), self.get("key_mask")
        if past_keys is not None:
            if key_mask is not None and past_mask is None:
                past_mask = key_mask.new_ones(past_keys.shape[0], past_keys.shape[2])
            if past_mask is not None and key_mask is None:
                key_mask = past_mask.new_ones(keys.shape[0], keys.shape[2])
            keys = torch.cat([past_keys, keys], dim=2)
            values = torch.cat([past_values, values], dim=2)
            if past_mask is not None:
                key_mask = torch.cat([past_mask, key_mask], dim=1)

        total = keys.shape[2]
        keep_from = 0 if self.window is None else max(total - (self.window - 1), 0)
        # Clone what a sliding window keeps, so that a long prefill's keys are not held alive by a view.
        bounded = (lambda t: t[..., keep_from:, :].clone()) if keep_from else (lambda t: t)
        self.set("keys", bounded(keys))
        self.set("values", bounded(values))
        if key_mask is not None:
            self.set("key_mask", key_mask[:, keep_from:].clone() if keep_from else key_mask)
        return keys, values, key_mask
