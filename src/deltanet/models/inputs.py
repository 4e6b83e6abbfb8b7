"""From Hugging Face style inputs (attention_mask, position_ids, cu_seqlens, cache) to a SequenceInfo.

Three ways tokens can be laid out, one per forward:

* plain rows: each row one sequence, continuing the cache if there is one;
* padded rows: attention_mask [B, past + T] (or [B, T]) with 0 at padding, on either side; only its
  last T columns are read, since the cache remembers which earlier tokens were padding;
* packed documents: cu_seqlens [N + 1] over the T tokens of one row, or position_ids that restart at 0
  inside a row (several rows are then laid end to end into one). No cache can be used with these.
"""

from __future__ import annotations

import torch

from deltanet.layers.sequence_info import SequenceInfo
from deltanet.models.cache import DeltaNetCache
from deltanet.ops.host_offsets import host_offsets


def padding_mask(attention_mask: torch.Tensor | None, batch_size: int, seq_len: int) -> torch.Tensor | None:
    """bool [B, T], False at padding, from a 2-D attention mask; None when there is no padding."""
    if attention_mask is None:
        return None
    if (
        attention_mask.dim() != 2
        or attention_mask.shape[0] != batch_size
        or attention_mask.shape[1] < seq_len
    ):
        raise ValueError(
            f"attention_mask must have shape [B, past + T] with B={batch_size}, T={seq_len}, "
            f"got {list(attention_mask.shape)}"
        )
    mask = attention_mask[:, -seq_len:].bool()
    return None if bool(mask.all()) else mask  # one host sync per forward buys the unmasked fast paths


def packed_documents(
    batch_size: int,
    seq_len: int,
    position_ids: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    token_mask: torch.Tensor | None,
) -> tuple[torch.Tensor | None, bool]:
    """cu_seqlens (int64) of packed documents, or None; and whether the B rows are laid end to end.

    position_ids mark documents only without padding: under left padding they restart at every pad.
    """
    if cu_seqlens is not None:
        if batch_size != 1:
            raise ValueError(f"cu_seqlens needs a single packed row (B = 1), got B={batch_size}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must have shape [N + 1], got {list(cu_seqlens.shape)}")
        # read once, shared with the ops; not under torch.compile (it would recompile for every packing)
        offsets = (0, seq_len) if torch.compiler.is_compiling() else host_offsets(cu_seqlens)
        if offsets[0] != 0 or offsets[-1] != seq_len:
            raise ValueError(
                f"cu_seqlens must be [0, ..., T={seq_len}] (shape [N + 1]), got {cu_seqlens.tolist()}"
            )
        if token_mask is not None:
            raise ValueError("attention_mask padding cannot be combined with cu_seqlens")
        return cu_seqlens.long(), False
    if position_ids is None or token_mask is not None or seq_len == 1:
        return None, False
    positions = position_ids.expand(batch_size, seq_len).reshape(-1)
    starts = positions == 0
    starts[::seq_len] = True  # every row starts a document
    if int(starts.sum()) == batch_size:  # no restart inside any row: not packed
        return None, False
    boundaries = torch.nonzero(starts).flatten()
    end = torch.tensor([batch_size * seq_len], device=boundaries.device)
    return torch.cat([boundaries, end]), batch_size > 1


def sequence_info_for(
    batch_size: int,
    seq_len: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cache: DeltaNetCache | None = None,
    max_seqlen: int | None = None,
) -> tuple[SequenceInfo, bool]:
    """The SequenceInfo of a [B, T] input, and whether its rows must be laid end to end into one.

    position_ids [B, T] or [1, T] are used as rotary positions when given; otherwise positions count
    the non-padding tokens of each row (continuing from the cache) or restart in each packed document.
    max_seqlen: for packed documents, the longest one's length or a bound of it (see
    SequenceInfo.max_document_length); rows laid end to end are bounded by their length T anyway.
    """
    if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[1] != seq_len
                                     or position_ids.shape[0] not in (1, batch_size)):  # fmt: skip
        raise ValueError(
            f"position_ids must have shape [B or 1, T={seq_len}], got {list(position_ids.shape)}"
        )
    token_mask = padding_mask(attention_mask, batch_size, seq_len)
    packed_cu_seqlens, flatten_rows = packed_documents(
        batch_size, seq_len, position_ids, cu_seqlens, token_mask
    )

    if packed_cu_seqlens is not None:
        if cache is not None:
            raise ValueError(
                "packed documents (cu_seqlens, or position_ids restarting at 0) cannot use a cache"
            )
        if max_seqlen is None and flatten_rows:
            max_seqlen = seq_len  # each row starts a document: none is longer than a row
        info = SequenceInfo(
            positions=torch.empty(0, dtype=torch.long, device=device), cu_seqlens=packed_cu_seqlens,
            max_document_length=max_seqlen,
        )
        if position_ids is None:
            info.positions = info.document_layout()[1][None]  # position inside each document, [1, T]
        else:
            info.positions = position_ids.expand(batch_size, seq_len).reshape(1, -1)
        return info, flatten_rows

    if position_ids is not None:
        return SequenceInfo(positions=position_ids.expand(batch_size, seq_len), token_mask=token_mask), False
    past = torch.zeros(batch_size, dtype=torch.long, device=device)
    if cache is not None and cache.valid_token_counts is not None:
        past = cache.valid_token_counts
    if token_mask is None:
        steps = torch.arange(seq_len, device=device).expand(batch_size, seq_len)
    else:
        steps = (token_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return SequenceInfo(positions=past[:, None] + steps, token_mask=token_mask), False


def document_starts(cu_seqlens: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """bool [B, T], True at the first token of each packed document (rows laid end to end). Empty documents
    (repeated offsets, e.g. padding at the end that keeps the number of documents fixed) start nothing."""
    total = batch_size * seq_len
    starts = torch.zeros(total + 1, dtype=torch.bool, device=cu_seqlens.device)
    starts[cu_seqlens[:-1]] = True  # an empty document at the end marks the extra slot
    return starts[:total].view(batch_size, seq_len)
