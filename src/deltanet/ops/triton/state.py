"""The sequential passes over chunks: per-chunk states forward, state gradients backward.

One program per (block of BV value columns, sequence, head) walks its sequence's chunks in order,
keeping the [K, BV] state slice in float32 registers; value columns are independent, so splitting V
across programs needs no communication. Per chunk c with entering state S = h_c:

    forward:   store h_c;  U~ = U - W S;  store U~;  S <- S + K^T U~
               (fused with the output: o_c = scale (Q S + tril(Q K^T) U~), storing h_c and U~ as well
               only when the backward is to use them)
    backward:  store dh_c = G (gradient of the state leaving chunk c);
               dU~ = scale tril(Q K^T)^T dO + K G;  store dU~;
               G <- G + scale Q^T dO - W^T dU~          (G ends as the initial state's gradient)

h and dh are [number of chunks, H, K, V] in the inputs' dtype; the running state and G stay float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.triton.common import (
    LAUNCH,
    block_dim,
    cdiv,
    dot,
    first_chunk,
    multiprocessor_count,
    num_stages_for,
    sequence_bounds,
)


@triton.jit
def state_fwd_kernel(
    q, k, w, u, h, u_tilde, o, h0, ht, cu_seqlens, chunk_offsets, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, FUSE_OUTPUT: tl.constexpr,
    STORE_STATES: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """FUSE_OUTPUT: also write o = scale (Q S + tril(Q K^T) U~) for each chunk (the forward's use).
    STORE_STATES: write h and U~ (for the backward, or for the separate output launch)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    n, i_h = i_nh // H, i_nh % H
    bos, seq_len = sequence_bounds(n, cu_seqlens, T, IS_VARLEN)
    c0 = first_chunk(n, chunk_offsets, T, BT, IS_VARLEN)
    rows = tl.arange(0, BT)

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INITIAL_STATE:
        p_h0 = tl.make_block_ptr(h0 + i_nh.to(tl.int64) * K * V, (K, V), (V, 1),
                                 (0, i_v * BV), (BK, BV), (1, 0))
        S += tl.load(p_h0, boundary_check=(0, 1)).to(tl.float32)
    for j in range(tl.cdiv(seq_len, BT)):
        # Rows past the sequence end load as zeros, so they add nothing to S.
        p_w = tl.make_block_ptr(w + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                                (j * BT, 0), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                                (j * BT, 0), (BT, BK), (1, 0))
        b_w = tl.load(p_w, boundary_check=(0, 1))
        b_k = tl.load(p_k, boundary_check=(0, 1))
        b_S = S.to(b_w.dtype)
        p_u = tl.make_block_ptr(u + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                                (j * BT, i_v * BV), (BT, BV), (1, 0))
        b_ut = tl.load(p_u, boundary_check=(0, 1)).to(tl.float32) - dot(b_w, b_S, DOT_PRECISION)
        if FUSE_OUTPUT:
            p_q = tl.make_block_ptr(q + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                                    (j * BT, 0), (BT, BK), (1, 0))
            p_o = tl.make_block_ptr(o + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                                    (j * BT, i_v * BV), (BT, BV), (1, 0))
            b_q = tl.load(p_q, boundary_check=(0, 1))
            b_qk = dot(b_q, tl.trans(b_k), DOT_PRECISION)  # does not wait for S
            b_qk = tl.where(rows[:, None] >= rows[None, :], b_qk, 0.0).to(b_q.dtype)
            b_o = dot(b_q, b_S, DOT_PRECISION)
            b_o += dot(b_qk, b_ut.to(b_q.dtype), DOT_PRECISION)
            tl.store(p_o, (scale * b_o).to(p_o.dtype.element_ty), boundary_check=(0, 1))
        if STORE_STATES:
            p_h = tl.make_block_ptr(h + ((c0 + j) * H + i_h) * K * V, (K, V), (V, 1),
                                    (0, i_v * BV), (BK, BV), (1, 0))
            p_ut = tl.make_block_ptr(u_tilde + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                                     (j * BT, i_v * BV), (BT, BV), (1, 0))
            tl.store(p_h, b_S.to(p_h.dtype.element_ty), boundary_check=(0, 1))
            tl.store(p_ut, b_ut.to(p_ut.dtype.element_ty), boundary_check=(0, 1))
        S += dot(tl.trans(b_k), b_ut.to(b_k.dtype), DOT_PRECISION)
    if STORE_FINAL_STATE:
        p_ht = tl.make_block_ptr(ht + i_nh.to(tl.int64) * K * V, (K, V), (V, 1),
                                 (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_ht, S, boundary_check=(0, 1))


@triton.jit
def state_bwd_kernel(
    q, k, w, do, dh, du_tilde, dht, dh0, cu_seqlens, chunk_offsets, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_FINAL_STATE_GRAD: tl.constexpr, STORE_INITIAL_STATE_GRAD: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The reverse pass: writes dh and dU~ per chunk (the per-chunk backward reads them) and, if asked, the
    initial state's gradient."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    n, i_h = i_nh // H, i_nh % H
    bos, seq_len = sequence_bounds(n, cu_seqlens, T, IS_VARLEN)
    c0 = first_chunk(n, chunk_offsets, T, BT, IS_VARLEN)
    rows = tl.arange(0, BT)

    G = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_FINAL_STATE_GRAD:
        p_dht = tl.make_block_ptr(dht + i_nh.to(tl.int64) * K * V, (K, V), (V, 1),
                                  (0, i_v * BV), (BK, BV), (1, 0))
        G += tl.load(p_dht, boundary_check=(0, 1)).to(tl.float32)
    num_chunks = tl.cdiv(seq_len, BT)
    for jj in range(num_chunks):
        j = num_chunks - 1 - jj
        p_dh = tl.make_block_ptr(dh + ((c0 + j) * H + i_h) * K * V, (K, V), (V, 1),
                                 (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh, G.to(p_dh.dtype.element_ty), boundary_check=(0, 1))
        p_k = tl.make_block_ptr(k + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                                (j * BT, 0), (BT, BK), (1, 0))
        p_w = tl.make_block_ptr(w + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                                (j * BT, 0), (BT, BK), (1, 0))
        b_k = tl.load(p_k, boundary_check=(0, 1))
        b_du = dot(b_k, G.to(b_k.dtype), DOT_PRECISION)
        p_q = tl.make_block_ptr(q + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                                (j * BT, 0), (BT, BK), (1, 0))
        p_do = tl.make_block_ptr(do + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                                 (j * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        # M^T[i, j] = q_j . k_i for i <= j: how token i's correction reaches later outputs.
        b_mt = dot(b_k, tl.trans(b_q), DOT_PRECISION)
        b_mt = tl.where(rows[:, None] <= rows[None, :], b_mt, 0.0).to(b_q.dtype)
        b_du += scale * dot(b_mt, b_do, DOT_PRECISION)
        G += scale * dot(tl.trans(b_q), b_do, DOT_PRECISION)
        p_du = tl.make_block_ptr(du_tilde + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                                 (j * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_du, b_du.to(p_du.dtype.element_ty), boundary_check=(0, 1))
        b_w = tl.load(p_w, boundary_check=(0, 1))
        G -= dot(tl.trans(b_w), b_du.to(b_w.dtype), DOT_PRECISION)
    if STORE_INITIAL_STATE_GRAD:
        p_dh0 = tl.make_block_ptr(dh0 + i_nh.to(tl.int64) * K * V, (K, V), (V, 1),
                                  (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh0, G, boundary_check=(0, 1))


def value_block(V: int, K: int, num_seqs: int, H: int, device: torch.device) -> int:
    # The [BK, BV] float32 state lives in registers: at most 128 x 64 of it. Each program walks a whole
    # sequence, so when there are fewer programs than multiprocessors, narrower blocks make more of them.
    settings = LAUNCH["state"]
    BV = settings["block_v"]
    if num_seqs * H * cdiv(V, BV) < multiprocessor_count(device):
        BV = settings["block_v_small"]
    return min(block_dim(V), BV, 64 if block_dim(K) <= 128 else 32)


def fuse_output_in_state_pass(V: int, K: int, num_seqs: int, H: int, device: torch.device) -> bool:
    """Whether the forward writes o from the sequential state pass (saving the round trip of h and U~
    through memory) or from a separate chunk-parallel launch. The default (True) was faster at every
    measured shape; "auto" fuses only when the state pass has a program for every multiprocessor (fusing
    lengthens each sequential step), which was the prediction before the measurement (docs/kernels.md v2)."""
    setting = LAUNCH["state"]["fuse_output"]
    if setting != "auto":
        return bool(setting)
    BV = value_block(V, K, num_seqs, H, device)
    return num_seqs * H * cdiv(V, BV) >= multiprocessor_count(device)


def state_fwd(k, w, u, initial_state, output_final_state, cu_seqlens, chunk_offsets, num_seqs,
              num_chunks, seq_len, chunk_size, dot_precision, q=None, scale=1.0, out_dtype=None,
              store_states=None):
    """-> (o or None, h or None, U~ or None, final state or None).

    With q (the fused forward): o [B, T, H, V] in out_dtype. store_states (default: when there is no q):
    h [num_chunks, H, K, V] (dtype of k; num_chunks may be an upper bound, rows past the last chunk are left
    unwritten) and U~ like u. The final state is [N, H, K, V] float32 when output_final_state."""
    H, K, V = k.shape[2], k.shape[3], u.shape[3]
    fuse = q is not None
    store_states = not fuse if store_states is None else store_states
    h = k.new_empty(num_chunks, H, K, V) if store_states else None
    u_tilde = torch.empty_like(u) if store_states else None
    o = u.new_empty(u.shape, dtype=out_dtype) if fuse else None
    final_state = k.new_empty(num_seqs, H, K, V, dtype=torch.float32) if output_final_state else None
    BV = value_block(V, K, num_seqs, H, k.device)
    state_fwd_kernel[(cdiv(V, BV), num_seqs * H)](
        q, k, w, u, h, u_tilde, o, initial_state, final_state, cu_seqlens, chunk_offsets, scale,
        seq_len, H, K, V, chunk_size, block_dim(K), BV,
        HAS_INITIAL_STATE=initial_state is not None, STORE_FINAL_STATE=final_state is not None,
        FUSE_OUTPUT=fuse, STORE_STATES=store_states, IS_VARLEN=cu_seqlens is not None,
        DOT_PRECISION=dot_precision,
        num_warps=LAUNCH["state"]["num_warps"], num_stages=num_stages_for(k.dtype),
    )
    return o, h, u_tilde, final_state


def state_bwd(q, k, w, do, final_state_grad, need_initial_state_grad, scale, cu_seqlens, chunk_offsets,
              num_seqs, num_chunks, seq_len, chunk_size, dot_precision):
    """-> dh [num_chunks, H, K, V] (dtype of q), dU~ like do, initial-state gradient float32 or None."""
    H, K, V = q.shape[2], q.shape[3], do.shape[3]
    dh = q.new_empty(num_chunks, H, K, V)
    du_tilde = torch.empty_like(do)
    dh0 = q.new_empty(num_seqs, H, K, V, dtype=torch.float32) if need_initial_state_grad else None
    BV = value_block(V, K, num_seqs, H, k.device)
    state_bwd_kernel[(cdiv(V, BV), num_seqs * H)](
        q, k, w, do, dh, du_tilde, final_state_grad, dh0, cu_seqlens, chunk_offsets, scale,
        seq_len, H, K, V, chunk_size, block_dim(K), BV,
        HAS_FINAL_STATE_GRAD=final_state_grad is not None, STORE_INITIAL_STATE_GRAD=dh0 is not None,
        IS_VARLEN=cu_seqlens is not None, DOT_PRECISION=dot_precision,
        num_warps=LAUNCH["state"]["num_warps"], num_stages=num_stages_for(k.dtype),
    )
    return dh, du_tilde, dh0
