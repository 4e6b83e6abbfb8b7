"""Per-chunk gradients, chunk-parallel: dq, dk, dv, dbeta from the state passes' h, dh, U~ and dU~.

For one chunk with entering state S = h, leaving-state gradient G = dh, P = tril(dO U~^T) (diagonal
kept), and the forward O = scale (Q S + tril(Q K^T) U~), S' = S + K^T U~, U~ = U - W S:

    dQ = scale (dO S^T + P K)
    dK = scale P^T Q + U~ G^T                       (direct terms)
    dW = -dU~ S^T,  dU = dU~

Then through the UT transform, X = L^-1 Y for (X, Y) in {(W, beta K), (U, beta V)}, L = I + A:

    dY = L^-T dX,   dA = -strict_lower(dY_W W^T + dY_U U^T)
    dK += beta dY_W + diag(beta) dA K + dA^T diag(beta) K
    dV  = beta dY_U
    dbeta = rowsum(dY_W * K) + rowsum(dY_U * V) + rowsum(dA * K K^T)

Two launches, each one program per (chunk, head) that loops over V in blocks of BV, so sums over V need
no atomics. `direct` (split further over blocks of key columns) makes dQ (final), the direct part of dK
(float32) and dW. `through_wy` (full key width) finishes dK and makes dV and dbeta from L^-1, W and U,
which the backward's recomputation of the forward stored. Splitting the v0 fused kernel in two took the
backward's per-chunk work from 3.0 to 0.83 ms (H100, docs/kernels.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.triton.common import (
    LAUNCH,
    block_dim,
    cdiv,
    chunk_coordinates,
    dot,
    num_stages_for,
    sequence_bounds,
)


@triton.jit
def bwd_direct_kernel(
    q, k, h, dh, u_tilde, du_tilde, do, dq, dk_direct, dw, cu_seqlens, chunk_indices, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Key columns [i_k * BK, (i_k + 1) * BK) only: every output here is linear in its key columns, and
    # P = dO U~^T (no key index) is cheap to recompute per block. Halves the float32 accumulators.
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, j = chunk_coordinates(i_c, chunk_indices, T, BT, IS_VARLEN)
    bos, seq_len = sequence_bounds(n, cu_seqlens, T, IS_VARLEN)
    rows = tl.arange(0, BT)
    qk_base = bos * H * K + i_h * K
    v_base = bos * H * V + i_h * V
    state_base = (i_c.to(tl.int64) * H + i_h) * K * V

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_P = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        p_h = tl.make_block_ptr(h + state_base, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        p_dh = tl.make_block_ptr(dh + state_base, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        p_ut = tl.make_block_ptr(u_tilde + v_base, (seq_len, V), (H * V, 1),
                                 (j * BT, i_v * BV), (BT, BV), (1, 0))
        p_dut = tl.make_block_ptr(du_tilde + v_base, (seq_len, V), (H * V, 1),
                                  (j * BT, i_v * BV), (BT, BV), (1, 0))
        p_do = tl.make_block_ptr(do + v_base, (seq_len, V), (H * V, 1), (j * BT, i_v * BV), (BT, BV), (1, 0))
        b_h = tl.load(p_h, boundary_check=(0, 1))
        b_dh = tl.load(p_dh, boundary_check=(0, 1))
        b_ut = tl.load(p_ut, boundary_check=(0, 1))
        b_dut = tl.load(p_dut, boundary_check=(0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        b_dq += dot(b_do, tl.trans(b_h), DOT_PRECISION)
        b_P += dot(b_do, tl.trans(b_ut), DOT_PRECISION)
        b_dk += dot(b_ut, tl.trans(b_dh), DOT_PRECISION)
        b_dw -= dot(b_dut, tl.trans(b_h), DOT_PRECISION)

    p_q = tl.make_block_ptr(q + qk_base, (seq_len, K), (H * K, 1), (j * BT, i_k * BK), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + qk_base, (seq_len, K), (H * K, 1), (j * BT, i_k * BK), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1))
    b_k = tl.load(p_k, boundary_check=(0, 1))
    b_P = tl.where(rows[:, None] >= rows[None, :], b_P, 0.0).to(b_q.dtype)
    b_dq = scale * (b_dq + dot(b_P, b_k, DOT_PRECISION))
    b_dk += scale * dot(tl.trans(b_P), b_q, DOT_PRECISION)

    p_dq = tl.make_block_ptr(dq + qk_base, (seq_len, K), (H * K, 1), (j * BT, i_k * BK), (BT, BK), (1, 0))
    p_dk = tl.make_block_ptr(dk_direct + qk_base, (seq_len, K), (H * K, 1),
                             (j * BT, i_k * BK), (BT, BK), (1, 0))
    p_dw = tl.make_block_ptr(dw + qk_base, (seq_len, K), (H * K, 1), (j * BT, i_k * BK), (BT, BK), (1, 0))
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dk, b_dk, boundary_check=(0, 1))
    tl.store(p_dw, b_dw.to(p_dw.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def bwd_through_wy_kernel(
    k, v, beta, a_inv, w, u, dw, du_tilde, dk_direct, dk, dv, dbeta, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    n, j = chunk_coordinates(i_c, chunk_indices, T, BT, IS_VARLEN)
    bos, seq_len = sequence_bounds(n, cu_seqlens, T, IS_VARLEN)
    rows = tl.arange(0, BT)
    qk_base = bos * H * K + i_h * K
    v_base = bos * H * V + i_h * V

    p_beta = tl.make_block_ptr(beta + bos * H + i_h, (seq_len,), (H,), (j * BT,), (BT,), (0,))
    b_beta = tl.load(p_beta, boundary_check=(0,)).to(tl.float32)
    p_a = tl.make_block_ptr(a_inv + (bos * H + i_h) * BT, (seq_len, BT), (H * BT, 1),
                            (j * BT, 0), (BT, BT), (1, 0))
    b_Lt = tl.trans(tl.load(p_a, boundary_check=(0, 1)))  # L^-T

    # The W = L^-1 (beta K) branch.
    p_dw = tl.make_block_ptr(dw + qk_base, (seq_len, K), (H * K, 1), (j * BT, 0), (BT, BK), (1, 0))
    p_w = tl.make_block_ptr(w + qk_base, (seq_len, K), (H * K, 1), (j * BT, 0), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + qk_base, (seq_len, K), (H * K, 1), (j * BT, 0), (BT, BK), (1, 0))
    p_dkd = tl.make_block_ptr(dk_direct + qk_base, (seq_len, K), (H * K, 1), (j * BT, 0), (BT, BK), (1, 0))
    b_k = tl.load(p_k, boundary_check=(0, 1))
    b_w = tl.load(p_w, boundary_check=(0, 1))
    b_gw = dot(b_Lt, tl.load(p_dw, boundary_check=(0, 1)).to(b_k.dtype), DOT_PRECISION)
    b_dA = dot(b_gw.to(b_k.dtype), tl.trans(b_w), DOT_PRECISION)
    b_dbeta = tl.sum(b_gw * b_k.to(tl.float32), 1)
    b_dk = tl.load(p_dkd, boundary_check=(0, 1)) + b_gw * b_beta[:, None]

    # The U = L^-1 (beta V) branch, over blocks of value columns.
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + v_base, (seq_len, V), (H * V, 1), (j * BT, i_v * BV), (BT, BV), (1, 0))
        p_u = tl.make_block_ptr(u + v_base, (seq_len, V), (H * V, 1), (j * BT, i_v * BV), (BT, BV), (1, 0))
        p_dut = tl.make_block_ptr(du_tilde + v_base, (seq_len, V), (H * V, 1),
                                  (j * BT, i_v * BV), (BT, BV), (1, 0))
        p_dv = tl.make_block_ptr(dv + v_base, (seq_len, V), (H * V, 1), (j * BT, i_v * BV), (BT, BV), (1, 0))
        b_gu = dot(b_Lt, tl.load(p_dut, boundary_check=(0, 1)), DOT_PRECISION)
        tl.store(p_dv, (b_gu * b_beta[:, None]).to(p_dv.dtype.element_ty), boundary_check=(0, 1))
        b_dbeta += tl.sum(b_gu * tl.load(p_v, boundary_check=(0, 1)).to(tl.float32), 1)
        b_dA += dot(b_gu.to(b_k.dtype), tl.trans(tl.load(p_u, boundary_check=(0, 1))), DOT_PRECISION)

    # Through A = strict_lower(diag(beta) K K^T).
    b_dA = tl.where(rows[:, None] > rows[None, :], -b_dA, 0.0)
    b_kk = dot(b_k, tl.trans(b_k), DOT_PRECISION)
    b_dbeta += tl.sum(b_dA * b_kk, 1)
    b_dAb = (b_dA * b_beta[:, None]).to(b_k.dtype)
    b_dk += dot(b_dAb, b_k, DOT_PRECISION)
    b_dk += dot(tl.trans(b_dAb), b_k, DOT_PRECISION)

    p_dk = tl.make_block_ptr(dk + qk_base, (seq_len, K), (H * K, 1), (j * BT, 0), (BT, BK), (1, 0))
    p_dbeta = tl.make_block_ptr(dbeta + bos * H + i_h, (seq_len,), (H,), (j * BT,), (BT,), (0,))
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dbeta, b_dbeta.to(p_dbeta.dtype.element_ty), boundary_check=(0,))


def chunk_bwd(q, k, v, beta, do, recomputed, scale, cu_seqlens, chunk_indices, num_chunks, seq_len,
              chunk_size, dot_precision):
    """-> dq, dk (like q), dv (like v), dbeta (like beta).

    recomputed: dict of the backward's intermediates (w, u, a_inv, h, u_tilde, dh, du_tilde). It is
    emptied as they stop being needed: when the backward recomputed them (LAUNCH["backward"]["saved"] =
    "inputs") nothing else holds them, and h, dh and U~ are freed before the second launch allocates dk, dv
    and dbeta. When the forward saved them, autograd holds them until the backward ends and only dh goes
    early (the op's peak was measured unchanged, docs/kernels.md v4).
    """
    H, K, V = q.shape[2], q.shape[3], v.shape[3]
    dq = torch.empty_like(q)
    dk_direct = torch.empty_like(k, dtype=torch.float32)
    dw = torch.empty_like(k)  # in k's dtype: the next launch feeds it to a product in that dtype anyway
    common = dict(IS_VARLEN=cu_seqlens is not None, DOT_PRECISION=dot_precision,
                  num_stages=num_stages_for(q.dtype))
    direct, through_wy = LAUNCH["bwd_direct"], LAUNCH["bwd_through_wy"]
    BK = min(block_dim(K), direct["block_k"])
    bwd_direct_kernel[(cdiv(K, BK), num_chunks, H)](
        q, k, recomputed.pop("h"), recomputed.pop("dh"), recomputed.pop("u_tilde"), recomputed["du_tilde"],
        do, dq, dk_direct, dw, cu_seqlens, chunk_indices, scale,
        seq_len, H, K, V, chunk_size, BK, min(block_dim(V), direct["block_v"]),
        num_warps=direct["num_warps"], **common,
    )
    dk, dv, dbeta = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta)
    bwd_through_wy_kernel[(num_chunks, H)](
        k, v, beta, recomputed.pop("a_inv"), recomputed.pop("w"), recomputed.pop("u"), dw,
        recomputed.pop("du_tilde"), dk_direct, dk, dv, dbeta, cu_seqlens, chunk_indices,
        seq_len, H, K, V, chunk_size, block_dim(K), min(block_dim(V), through_wy["block_v"]),
        num_warps=through_wy["num_warps"], **common,
    )
    return dq, dk, dv, dbeta
