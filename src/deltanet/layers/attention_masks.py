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


def flex_block_mask(
    seq_len: int,
    window: int | None,
    document_ids: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    device: torch.device,
):
    """The rule (no cached keys) as a FlexAttention BlockMask over [B or 1, 1, T, T]."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, query_index, key_index):
        allowed = key_index <= query_index
        if window is not None:
            allowed = allowed & (query_index - key_index < window)
        if document_ids is not None:
            allowed = allowed & (document_ids[query_index] == document_ids[key_index])
        if key_mask is not None:
            allowed = allowed & (key_mask[batch, key_index] | (key_index == query_index))
        return allowed

    batch = None if key_mask is None else key_mask.shape[0]
    return create_block_mask(mask_mod, B=batch, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)
