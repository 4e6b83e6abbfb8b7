"""Packed rows: a split's documents laid end to end into fixed-length rows of tokens, the models' input.

Where it sits: on top of corpus (the documents) and a tokenizer (anything with `encode`; `encode_tensor` when
it has one); the trainer reads `PackedRows.next_rows` and checkpoints `PackedRows.state_dict`.

Position ids restart at 0 at each document start, and the rows resume exactly where a checkpoint left them,
seeking in the sources to the saved document rather than reading the documents before it.
"""

from __future__ import annotations

import torch

from deltanet.train.corpus import Corpus, DocumentStream
from deltanet.train.errors import DataError


class PackedRows:
    """Fixed-length rows of tokens from a split's documents laid end to end: the models' packed input.

    Position ids restart at 0 where a document starts (so its first token is not predicted from the
    previous document); a document that does not fit the rest of a row continues at the start of the next
    row with its positions continuing (37, 38, ...). After the split's last document the next epoch begins,
    its units re-shuffled when `shuffle`. Only the current document's tokens are held in memory.

    With `max_document_tokens`, a longer document is cut to its first max_document_tokens tokens, as if it
    ended there (the rest is skipped): held-out rows built with max_document_tokens=seq_len come from many
    documents rather than from the first thousands of tokens of one.

    Exactly resumable: after `load_state_dict(other.state_dict())`, `next_rows` gives the rows `other`
    would have given next.
    """

    def __init__(
        self,
        corpus: Corpus,
        tokenizer,
        split: str,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        max_document_tokens: int | None = None,
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if max_document_tokens is not None and max_document_tokens < 1:
            raise ValueError(f"max_document_tokens must be None or >= 1, got {max_document_tokens}")
        corpus.num_units(split)  # validates the split's name now rather than at the first row
        self.corpus, self.tokenizer, self.split = corpus, tokenizer, split
        self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
        self.max_document_tokens = max_document_tokens
        self._encode_tensor = getattr(tokenizer, "encode_tensor", None)
        self.load_state_dict({"epoch": 0, "doc_index": 0, "token_offset": 0, "tokens_read": 0})

    @property
    def epoch(self) -> int:
        """Passes over the split completed so far (0 during the first)."""
        return self._epoch

    def state_dict(self) -> dict:
        """Where the next row starts (JSON-able).

        {"epoch", "doc_index": the document's index in the epoch's order, "token_offset": the token inside
        it (of the cut document, with max_document_tokens), "tokens_read": tokens returned so far, "source":
        where that document lies in the sources (a Corpus stream position, see DocumentStream), for a resume
        that seeks there; None at an epoch's start}. A state resumes exactly in a PackedRows built with the
        same arguments (max_document_tokens included).
        """
        return {
            "epoch": self._epoch,
            "doc_index": self._doc_index,
            "token_offset": self._token_offset,
            "tokens_read": self._tokens_read,
            "source": self._source_position(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` (from state_dict) says: the next next_rows() starts there.

        A state without "source" (from before it was kept) resumes too, by reading the documents before it.
        """
        for key in ("epoch", "doc_index", "token_offset", "tokens_read"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                raise ValueError(f"state[{key!r}] must be an int >= 0, got {state.get(key)!r}")
        source = state.get("source")
        if source is not None and not isinstance(source, dict):
            raise ValueError(f"state['source'] must be a dict or None, got {source!r}")
        self._epoch, self._doc_index = state["epoch"], state["doc_index"]
        self._token_offset, self._tokens_read = state["token_offset"], state["tokens_read"]
        self._source = source  # where document doc_index lies, until the stream is opened there
        self._close_documents()
        self._tokens: torch.Tensor | None = None  # the current document's tokens, [L]
        # An epoch that yields no token at all would loop forever: noticed only for epochs seen whole.
        self._epoch_seen_whole = self._doc_index == 0 and self._token_offset == 0
        self._epoch_had_tokens = False

    def next_rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next n rows: input_ids and position_ids, both int64 [n, seq_len].

        Raises:
            DataError: when a whole epoch of the split yields no token (every document empty).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        total = n * self.seq_len
        input_ids = torch.empty(total, dtype=torch.int64)
        position_ids = torch.empty(total, dtype=torch.int64)
        filled = 0
        while filled < total:  # one pass per document piece, not per token
            tokens = self._current_document()
            take = min(tokens.numel() - self._token_offset, total - filled)
            end = self._token_offset + take
            input_ids[filled:filled + take] = tokens[self._token_offset:end]  # widens uint8 ids
            position_ids[filled:filled + take] = torch.arange(self._token_offset, end)
            filled += take
            self._token_offset = end
            if end == tokens.numel():  # done with it: the state then points at the next document
                self._tokens = None
                self._doc_index += 1
                self._token_offset = 0
        self._tokens_read += total
        return input_ids.view(n, self.seq_len), position_ids.view(n, self.seq_len)

    def _current_document(self) -> torch.Tensor:
        """The tokens of the document at (epoch, doc_index), with token_offset inside it; moves past
        empty documents and on to the next epoch as needed."""
        while self._tokens is None:
            if self._documents is None:
                self._documents = self.corpus.documents(self.split, epoch=self._epoch, seed=self.seed,
                                                        shuffle=self.shuffle, start=self._doc_index,
                                                        position=self._source)
            text = next(self._documents, None)
            if text is None:
                self._next_epoch()
                continue
            tokens = self._encode(text)[: self.max_document_tokens]  # [:None] keeps them all
            if self._token_offset >= tokens.numel():  # an empty document (or a state at a document's end)
                self._doc_index += 1
                self._token_offset = 0
                continue
            self._tokens = tokens
            self._epoch_had_tokens = True
        return self._tokens

    def _next_epoch(self) -> None:
        if self._epoch_seen_whole and not self._epoch_had_tokens:
            raise DataError(f"{self.corpus.description}: the {self.split} split yields no token")
        self._close_documents()
        self._epoch += 1
        self._doc_index = self._token_offset = 0
        self._source = None
        self._epoch_seen_whole, self._epoch_had_tokens = True, False

    def _source_position(self) -> dict | None:
        """Where document doc_index lies in the sources."""
        if self._documents is None:
            return self._source  # nothing read since load_state_dict or the epoch's start
        if self._tokens is not None:
            return self._documents.last_position()  # the current document, partly returned
        return self._documents.next_position()  # the current document is done with: the next one

    def _encode(self, text: str) -> torch.Tensor:
        """Token ids [L] (uint8 from ByteTokenizer, int64 otherwise)."""
        if self._encode_tensor is not None:
            return self._encode_tensor(text)
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.int64)

    def _close_documents(self) -> None:
        """Drop the document stream, closing its open file now rather than when garbage-collected."""
        documents = getattr(self, "_documents", None)
        if documents is not None:
            documents.close()
        self._documents: DocumentStream | None = None
