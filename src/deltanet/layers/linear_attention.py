"""Plain linear attention, the baseline DeltaNet is compared with (Katharopoulos et al., 2020).

Per head, with the same feature map as DeltaNet (short conv, SiLU, L2-normalised q and k) and the same
per-head output norm, so that only the state update differs:

    S_t = S_{t-1} + k_t v_t^T,      o_t = S_t^T q_t / sqrt(D)

There is no denominator; the output RMSNorm plays its role. `chunk_linear_attention` is the chunkwise
form in plain PyTorch (the linear-attention counterpart of deltanet.ops.chunk_delta_rule).
"""

from __future__ import annotations

import torch

from deltanet.layers.recurrent_mixer import LinearRecurrentMixer


def chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal linear attention in chunks of C tokens; o_t reads the state after its own update.

    Args:
        q, k: [B, T, H, K] (features already applied). v: [B, T, H, V].
        scale: output scale, default K ** -0.5.
        initial_state: [B, H, K, V] or None (zeros).
        chunk_size: C; within a chunk o = Q S + tril(Q K^T) V, across chunks S += K^T V.

    Returns:
        o [B, T, H, V] in v's dtype and the final state [B, H, K, V], computed in float32 (float64 if
        every input is float64). Differentiable by autograd.
    """
    batch, seq_len, num_heads, key_dim = q.shape
    compute_dtype = torch.float64 if all(t.dtype == torch.float64 for t in (q, k, v)) else torch.float32
    scale = key_dim**-0.5 if scale is None else scale
    pad = (-seq_len) % chunk_size

    def to_chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, d] -> [B, H, NC, C, d]
        x = torch.nn.functional.pad(x.to(compute_dtype), (0, 0, 0, 0, 0, pad))  # zero keys add nothing
        return x.reshape(batch, -1, chunk_size, num_heads, x.shape[-1]).movedim(3, 1)

    qc, kc, vc = to_chunks(q), to_chunks(k), to_chunks(v)
    if initial_state is None:
        initial_state = qc.new_zeros(batch, num_heads, key_dim, v.shape[-1])
    state = initial_state.to(compute_dtype)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    intra = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0) @ vc  # [B, H, NC, C, V]
    chunk_writes = kc.transpose(-1, -2) @ vc  # K^T V per chunk, [B, H, NC, K, V]
    # State entering chunk n: the initial state plus the writes of chunks 0 .. n-1 (exclusive prefix sum).
    entering = state[:, :, None] + chunk_writes.cumsum(dim=2) - chunk_writes
    o = scale * (qc @ entering + intra)  # [B, H, NC, C, V]
    o = o.movedim(1, 3).reshape(batch, -1, num_heads, v.shape[-1])[:, :seq_len]
    return o.to(v.dtype), state + chunk_writes.sum(dim=2)


class LinearAttention(LinearRecurrentMixer):
    """Linear-attention mixer: LinearRecurrentMixer's frame with S_t = S_{t-1} + k_t v_t^T.

    Args (besides LinearRecurrentMixer's): chunk_size, tokens per chunk of the chunkwise form.
    """

    def __init__(self, *args, chunk_size: int = 64, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_size = chunk_size

    def recurrence(self, q, k, v, hidden_states, info, initial_state, output_final_state, projected):
        if info.token_mask is not None:
            k = k * info.token_mask[..., None, None].to(k.dtype)  # a zero key writes nothing at padding
        if info.is_packed:
            # Each document in its own zero-padded row: states start at zero and never cross documents.
            q, k, v = (info.unpack_documents(t) for t in (q, k, v))
            o, _ = chunk_linear_attention(q, k, v, chunk_size=self.chunk_size)
            return info.repack_documents(o), None
        chunk_size = 1 if q.shape[1] == 1 else self.chunk_size  # a decoding step needs no padding to C
        o, final_state = chunk_linear_attention(q, k, v, initial_state=initial_state, chunk_size=chunk_size)
        return o, (final_state if output_final_state else None)
