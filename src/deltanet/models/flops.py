"""Training FLOPs per token of a model, for throughput in TFLOP/s and model FLOPs utilisation (MFU).

The convention of nanoGPT's estimate_mfu and of the paper's throughput figures:
    6 N                       N = parameters of the matrix products: every 2-D weight but the input
                              embedding (the output head counts, also when it shares the embedding's weight)
  + per attention layer       12 d c, c = the mean number of keys a query sees (T / 2 causal; about the window
                              W for a sliding window), d = heads * head_dim
  + per DeltaNet layer        6 H (5 C D + 3 D^2): the chunked delta rule's products per token (C = chunk,
                              K = V = D; forward as in benchmarks/kernels.py, backward = 2 forwards)
  + per linear-attention layer 6 H (2 C D + 2 D^2)
"""

from __future__ import annotations

import torch

from deltanet.models.configuration import DeltaNetConfig


def matmul_parameters(model: torch.nn.Module) -> int:
    """N of the 6 N term."""
    count = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is not None and embed is not None and head.weight is embed.weight:  # tied: still a matmul
        count += head.weight.numel()
    return count


def mean_attended_keys(seq_len: int, window: int | None) -> float:
    """Keys per query averaged over a causal row of seq_len tokens (within a window when one is given)."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    # the first `window` queries see 1..window keys, the rest see window each
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def training_flops_per_token(model: torch.nn.Module, config: DeltaNetConfig, seq_len: int) -> float:
    """Forward+backward FLOPs per trained token at rows of seq_len tokens, by the module docstring."""
    flops = 6.0 * matmul_parameters(model)
    heads, head_dim, chunk = config.num_heads, config.head_dim, config.chunk_size
    for mixer in config.mixer_types:
        if mixer == "attn":
            flops += 12 * heads * head_dim * mean_attended_keys(seq_len, config.attn_window)
        elif mixer == "deltanet":
            flops += 6 * heads * (5 * chunk * head_dim + 3 * head_dim * head_dim)
        elif mixer == "linear_attn":
            flops += 6 * heads * (2 * chunk * head_dim + 2 * head_dim * head_dim)
    return flops
