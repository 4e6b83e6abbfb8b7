"""Tokenizers for `deltanet train`: text in, token ids out.

Where it sits: on top of torch and errors (transformers is imported only when a Hugging Face tokenizer is
loaded); PackedRows encodes each document with one, and the trainer takes its vocab_size and measures
held-out text with `count_bytes` (for bits per byte).

* `ByteTokenizer`: UTF-8 bytes as ids 0..255, the default: no download, any text.
* `HuggingFaceTokenizer`: any transformers.AutoTokenizer, from the hub or a local path.
* `load_tokenizer` picks one from the `tokenizer` setting.

A tokenizer that cannot be loaded is a `DataError` with a one-line message.
"""

from __future__ import annotations

import sys

import torch

from deltanet.train.errors import DataError, first_line


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

    def count_bytes(self, ids: list[int]) -> int:
        """UTF-8 bytes of the text that `ids` stand for: one a token."""
        return len(ids)


class HuggingFaceTokenizer:
    """Any Hugging Face tokenizer (transformers.AutoTokenizer: a hub name or a local path).

    Bytes are measured by decoding after a fixed context (the tokens of "a"): decoders drop the leading
    space of a text's first token (SentencePiece's "▁the" decodes alone to "the"), which is not what the
    token stands for inside running text (" the").
    """

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except Exception as exc:  # OSError, ValueError, hub errors...: all mean "cannot be loaded"
            raise DataError(f"cannot load the tokenizer {name_or_path!r}: {first_line(exc)}") from exc
        # Whole documents are encoded, longer than any model_max_length: without this, transformers warns
        # about each long one although nothing is truncated and rows are cut here.
        tokenizer.model_max_length = sys.maxsize
        self._tokenizer = tokenizer
        self.name = name_or_path
        self.vocab_size = len(tokenizer)  # includes added tokens, unlike tokenizer.vocab_size
        self._context = tokenizer.encode("a", add_special_tokens=False)
        self._context_bytes = len(self._decode_to_bytes(self._context))
        # the model's config takes these (generation stops at EOS)
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self._special_ids = set(tokenizer.all_special_ids)

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, with no special tokens added."""
        return self._tokenizer.encode(text, add_special_tokens=False)

    def encode_tensor(self, text: str) -> torch.Tensor:
        """A whole document's ids, int64 [L], followed by EOS when the tokenizer has one: packed training rows
        then teach the model where a document ends (and generate() stops there)."""
        ids = self.encode(text)
        if self.eos_token_id is not None and ids:
            ids.append(self.eos_token_id)
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids)

    def _decode_to_bytes(self, ids: list[int]) -> bytes:
        # No clean-up: it would take spaces out (" ." -> ".") that the tokens do stand for.
        return self._tokenizer.decode(ids, clean_up_tokenization_spaces=False).encode("utf-8")

    def count_bytes(self, ids: list[int]) -> int:
        """UTF-8 bytes of the text that `ids` stand for as a piece of a longer text (the denominator of bits
        per byte): len(decode(context + ids)) - len(decode(context)), with leading spaces kept.

        Exact for whole characters; a character whose bytes are split between this list and its neighbours
        (byte-level BPE, byte fallback) counts as the 3 bytes of the U+FFFD that replaces each piece.
        """
        ids = [token for token in ids if token not in self._special_ids]  # EOS & co. stand for no text
        if not ids:
            return 0
        return len(self._decode_to_bytes(self._context + ids)) - self._context_bytes


def load_tokenizer(spec: str):
    """"bytes" -> ByteTokenizer(); anything else -> HuggingFaceTokenizer(spec)."""
    return ByteTokenizer() if spec == "bytes" else HuggingFaceTokenizer(spec)
