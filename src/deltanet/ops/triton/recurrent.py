"""The delta rule token by token on Triton: decoding one or a few new tokens against a cached state.

One program per (block of BV value columns, sequence, head) keeps its [K, BV] slice of the state in
float32 registers and walks the tokens in order:

    pred = S^T k;  S <- S + beta k (v - pred)^T;  o = scale S^T q

Reading and writing the state once per call (not once per token) is what makes generation cheap; with
update_in_place the final state overwrites the initial state, so a decoding loop allocates nothing.
Forward only: training uses the chunked op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.triton.common import block_dim, cdiv, sequence_bounds


@triton.jit
def recurrent_fwd_kernel(
    q, k, v, beta, o, h0, ht, cu_seqlens, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    n, i_h = i_nh // H, i_nh % H
    bos, seq_len = sequence_bounds(n, cu_seqlens, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = o_k < K, o_v < V
    mask_s = mask_k[:, None] & mask_v[None, :]
    state_offsets = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INITIAL_STATE:
        S += tl.load(h0 + state_offsets, mask=mask_s, other=0.0)
    p_qk = bos * H * K + i_h * K + o_k
    p_v = bos * H * V + i_h * V + o_v
    p_beta = bos * H + i_h
    for _ in range(seq_len):
        b_k = tl.load(k + p_qk, mask=mask_k, other=0.0).to(tl.float32)
        b_q = tl.load(q + p_qk, mask=mask_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=mask_v, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + p_beta).to(tl.float32)
        delta = b_beta * (b_v - tl.sum(b_k[:, None] * S, 0))
        S += b_k[:, None] * delta[None, :]
        b_o = scale * tl.sum(b_q[:, None] * S, 0)
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=mask_v)
        p_qk += H * K
        p_v += H * V
        p_beta += H
    if STORE_FINAL_STATE:
        tl.store(ht + state_offsets, S, mask=mask_s)


def recurrent_delta_rule_triton(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens,
                                update_in_place=False):
    """Validated inputs (q, k already normalised if asked) -> (o like v, final state float32 or None).

    update_in_place: write the final state into initial_state (which must then be float32 and
    contiguous) and return it.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
    if update_in_place:
        if initial_state is None or initial_state.dtype != torch.float32 or not initial_state.is_contiguous():
            raise ValueError("update_in_place=True needs initial_state as a contiguous float32 tensor "
                             f"[{N}, {H}, {K}, {V}]")
        final_state = initial_state
    else:
        if initial_state is not None:
            initial_state = initial_state.to(torch.float32).contiguous()
        final_state = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    o = torch.empty_like(v)
    BK = block_dim(K)
    BV = min(block_dim(V), 64 if BK <= 128 else 32)
    recurrent_fwd_kernel[(cdiv(V, BV), N * H)](
        q, k, v, beta, o, initial_state, final_state, cu_seqlens, scale,
        T, H, K, V, BK, BV,
        HAS_INITIAL_STATE=initial_state is not None, STORE_FINAL_STATE=final_state is not None,
        IS_VARLEN=cu_seqlens is not None, num_warps=4,
    )
    return o, (final_state if (output_final_state or update_in_place) else None)
