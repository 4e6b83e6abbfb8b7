"""Which keys each query may attend to: causal, optionally a sliding window, packed documents, padding.

Query i of the current T tokens sits at index L + i of the key sequence (L cached keys before it).
It may see key j when

    j <= L + i                          causal
    L + i - j < window                  sliding window: itself and window - 1 keys back (if a window is set)
    document[j] == document[L + i]      packed documents (only without a cache, so L = 0)
    key_mask[j] or j == L + i           padding keys are never seen; a padding query sees itself only,
                                        so that its softmax row is not empty (an empty row gives NaN,
                                        and 0 * NaN would leak into real rows of later layers)

Two forms of the same rule: a dense boolean mask for SDPA (CPU, decoding, padding) and a FlexAttention
block mask for long masked sequences on the GPU, which skips fully masked blocks instead of computing them.
"""

from __future__ import annotations

import torch


def only_causal(num_queries: int, num_past: int, window: int | None, masked: bool) -> bool:
    """True when the rule above reduces to plain causality for these sizes (no explicit mask needed).

    `masked` says whether padding or documents are present. With no past keys, SDPA's is_causal is
    exact; with one query, every past key is visible; a window wider than all keys never bites.
    """
    if masked or (window is not None and num_past + num_queries > window):
        return False
    return num_past == 0 or num_queries == 1


def dense_attention_mask(
    num_queries: int,
    num_past: int,
    window: int | None,
    document_ids: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """The rule as a boolean SDPA mask, True = may attend.

    Args:
        num_queries: T, the new tokens. num_past: L, cached keys before them.
        window: sliding window size or None (global).
        document_ids: int [T] document of each token (packed input, requires num_past == 0) or None.
        key_mask: bool [B, L + T] (False at padding) or None.

    Returns:
        bool [B, 1, T, L + T] with a key_mask, else [1, 1, T, L + T].
    """
    query_index = num_past + torch.arange(num_queries, device=device)[:, None]  # [T, 1]
    key_index = torch.arange(num_past + num_queries, device=device)[None, :]  # [1, L + T]
    allowed = key_index <= query_index
    if window is not None:
        allowed = allowed & (query_index - key_index < window)
    if document_ids is not None:
        if num_past:
            raise ValueError("packed documents cannot be combined with cached keys")
        allowed = allowed & (document_ids[:, None] == document_ids[None, :])
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & (key_mask[:, None, None, :] | (key_index == query_index)[None, None])
    return allowed


FLEX_BLOCK_SIZE = 128  # FlexAttention's default block (queries and keys)


def flex_block_mask(
    seq_len: int,
    window: int | None,
    document_ids: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    device: torch.device,
):
    """The rule (no cached keys) as a FlexAttention BlockMask over [B or 1, 1, T, T].

    Without padding the blocks are classified from block bounds (packed_block_mask); create_block_mask
    would evaluate the rule on all T x T pairs, which for a packed batch of 24 x 2048 tokens asked for 18 GiB
    (an H100 run of deltanet-global ran out of memory) and was a third of deltanet-swa-small's GPU time."""
    def mask_mod(batch, head, query_index, key_index):
        allowed = key_index <= query_index
        if window is not None:
            allowed = allowed & (query_index - key_index < window)
        if document_ids is not None:
            allowed = allowed & (document_ids[query_index] == document_ids[key_index])
        if key_mask is not None:
            allowed = allowed & (key_mask[batch, key_index] | (key_index == query_index))
        return allowed

    if key_mask is None:
        return packed_block_mask(seq_len, window, document_ids, mask_mod, device)
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, B=key_mask.shape[0], H=None, Q_LEN=seq_len, KV_LEN=seq_len,
                             device=device)


def packed_block_mask(
    seq_len: int,
    window: int | None,
    document_ids: torch.Tensor | None,
    mask_mod,
    device: torch.device,
    block_size: int = FLEX_BLOCK_SIZE,
):
    """The BlockMask of causal attention, optionally windowed and within packed documents, computed per
    block pair from the blocks' first and last tokens: O((T / block_size)^2) work, never T x T.

    document_ids: int [T], non-decreasing (packed documents lie end to end), or None (one document).
    A block pair is *full* when every query-key pair in it is allowed (all three conditions hold at the
    extreme pairs; documents: both blocks inside one document) and is then computed without `mask_mod`.
    It is *partial* when each condition holds for some pair. That is necessary for an allowed pair and may
    keep a few pairs with none, which `mask_mod` then masks entirely: exact either way.
    """
    from torch.nn.attention.flex_attention import BlockMask

    num_blocks = -(-seq_len // block_size)
    first = torch.arange(num_blocks, device=device) * block_size  # each block's first token
    last = (first + block_size - 1).clamp(max=seq_len - 1)  # and its last
    q_first, q_last, k_first, k_last = first[:, None], last[:, None], first[None, :], last[None, :]
    some = k_first <= q_last  # [query block, key block]
    every = k_last <= q_first
    if window is not None:
        some = some & (q_first - k_last < window)
        every = every & (q_last - k_first < window)
    if document_ids is not None:
        doc_first, doc_last = document_ids[first], document_ids[last]
        some = some & (doc_first[:, None] <= doc_last[None, :]) & (doc_first[None, :] <= doc_last[:, None])
        inside_one = doc_first == doc_last
        every = every & inside_one[:, None] & inside_one[None, :] & (doc_first[:, None] == doc_first[None, :])
    partial = some & ~every

    def listed(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[query block, key block] bool -> (count per query block [1, 1, N], key blocks listed first
        [1, 1, N, N]), both int32, as BlockMask stores them."""
        counts = blocks.sum(-1, dtype=torch.int32)
        order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts[None, None], order[None, None]

    return BlockMask.from_kv_blocks(*listed(partial), *listed(every), BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(seq_len, seq_len))
