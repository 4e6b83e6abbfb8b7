"""Tokenizers for `deltanet train`: text in, token ids out.

Where it sits: on top of torch and errors (transformers is imported only when a Hugging Face tokenizer is
loaded); PackedRows encodes each document with one, and the trainer takes its vocab_size.

* `ByteTokenizer`: UTF-8 bytes as ids 0..255, the default: no download, any text.
* `HuggingFaceTokenizer`: any transformers.AutoTokenizer, from the hub or a local path.
* `load_tokenizer` picks one from the `tokenizer` setting.

A tokenizer that cannot be loaded is a `DataError` with a one-line message.
"""

from __future__ import annotations

import sys

import torch

from deltanet.train.errors import DataError, _first_line


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 (the default: no download, any text)."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        """The ids of `text` as uint8 [L]: 1 byte a token, 8x less than int64 for a long document."""
        data = bytearray(text.encode("utf-8"))  # a writable copy: torch.frombuffer warns on read-only bytes
        if not data:  # frombuffer refuses an empty buffer
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(data, dtype=torch.uint8)

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes each token id stands for: all 1."""
        return [1] * self.vocab_size


class HuggingFaceTokenizer:
    """Any Hugging Face tokenizer (transformers.AutoTokenizer: a hub name or a local path)."""

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except Exception as exc:  # OSError, ValueError, hub errors...: all mean "cannot be loaded"
            raise DataError(f"cannot load the tokenizer {name_or_path!r}: {_first_line(exc)}") from exc
        # Whole documents are encoded, longer than any model_max_length: without this, transformers warns
        # about each long one although nothing is truncated and rows are cut here.
        tokenizer.model_max_length = sys.maxsize
        self._tokenizer = tokenizer
        self.name = name_or_path
        self.vocab_size = len(tokenizer)  # includes added tokens, unlike tokenizer.vocab_size
        self._byte_lengths: list[int] | None = None

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, with no special tokens added (no BOS/EOS: documents are packed as they are)."""
        return self._tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids)

    def token_byte_lengths(self) -> list[int]:
        """Per id, len(decode([id]).encode("utf-8")): computed once (batched), then cached."""
        if self._byte_lengths is None:
            pieces = self._tokenizer.batch_decode([[token_id] for token_id in range(self.vocab_size)])
            self._byte_lengths = [len(piece.encode("utf-8")) for piece in pieces]
        return self._byte_lengths


def load_tokenizer(spec: str):
    """"bytes" -> ByteTokenizer(); anything else -> HuggingFaceTokenizer(spec)."""
    return ByteTokenizer() if spec == "bytes" else HuggingFaceTokenizer(spec)
