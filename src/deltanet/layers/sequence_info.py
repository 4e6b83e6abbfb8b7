"""Where the tokens of one forward call sit: positions, padding and packed-document boundaries.

Every token mixer receives a `SequenceInfo` next to its hidden states. It is built once per forward by
the model (deltanet.models) and shared by all layers, so that derived tensors (document ids, attention
masks) are computed once and memoised here instead of once per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from deltanet.ops.host_offsets import host_offsets


@dataclass
class SequenceInfo:
    """Layout of a [B, T] block of tokens.

    Attributes:
        positions: int64 [B, T], the position of each token inside its document (for rotary embeddings).
            With a cache it counts the earlier tokens too; at padding it is arbitrary.
        token_mask: bool [B, T] or None. False marks padding tokens, which must not influence any real
            token (no state update, no conv input, never attended to). None means no padding.
        cu_seqlens: int64 [N + 1] or None: N documents packed along T of a single row (B == 1), in the
            FlashAttention convention. No state, conv window or attention crosses a document boundary.
        max_document_length: with cu_seqlens, the longest document's length or a bound of it known on the
            host (FlashAttention's max_seqlen; the length of the rows that were packed), or None: then it is
            read from cu_seqlens when needed. A bound keeps the layers that pad each document to a common
            length (linear attention) free of a data-dependent shape, as torch.compile needs.
    """

    positions: torch.Tensor
    token_mask: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_document_length: int | None = None
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def contiguous(cls, batch_size: int, seq_len: int, device: torch.device, offset: int = 0) -> SequenceInfo:
        """One unpadded sequence per row, positions offset, offset + 1, ..."""
        positions = torch.arange(offset, offset + seq_len, device=device).expand(batch_size, seq_len)
        return cls(positions=positions)

    def memo(self, key: Any, build: Callable[[], Any]) -> Any:
        """Build a derived object once per forward and share it between layers."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    @property
    def is_packed(self) -> bool:
        return self.cu_seqlens is not None

    def document_layout(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """For packed input: (document index [T], position inside the document [T], the longest length, or
        max_document_length when given).

        Without max_document_length, reads cu_seqlens on the host once per forward (one sync, and a
        data-dependent length under torch.compile). With it, checks it against the host's copy of the
        offsets when not compiling (free when the caller remembered them: ops.host_offsets).
        """
        if self.cu_seqlens is None:
            raise ValueError("document_layout needs cu_seqlens (packed documents)")

        def build() -> tuple[torch.Tensor, torch.Tensor, int]:
            device = self.cu_seqlens.device
            starts = self.cu_seqlens[:-1].long()
            lengths = self.cu_seqlens[1:].long() - starts
            # The packed row's length, when the positions already say it: a static output size (under
            # torch.compile, repeat_interleave's own would be data-dependent).
            total = self.positions.shape[-1] if self.positions.numel() else None
            document = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths,
                                               output_size=total)
            position = torch.arange(document.numel(), device=device) - starts[document]
            bound = self.max_document_length
            if bound is None:
                return document, position, int(lengths.max())
            if not torch.compiler.is_compiling():
                offsets = host_offsets(self.cu_seqlens)
                longest = max((b - a for a, b in zip(offsets[:-1], offsets[1:])), default=0)
                if longest > bound:
                    raise ValueError(f"max_seqlen {bound} is shorter than the longest packed document "
                                     f"({longest} tokens)")
            return document, position, bound

        return self.memo("document_layout", build)

    def unpack_documents(self, packed: torch.Tensor) -> torch.Tensor:
        """[1, T, ...] packed row -> [N, L_max, ...], each document left-aligned and zero-padded after."""
        document, position, max_len = self.document_layout()
        num_documents = self.cu_seqlens.numel() - 1
        padded = packed.new_zeros(num_documents, max_len, *packed.shape[2:])
        return padded.index_put((document, position), packed[0])

    def repack_documents(self, padded: torch.Tensor) -> torch.Tensor:
        """Inverse of `unpack_documents`: [N, L_max, ...] -> [1, T, ...]."""
        document, position, _ = self.document_layout()
        return padded[document, position][None]
