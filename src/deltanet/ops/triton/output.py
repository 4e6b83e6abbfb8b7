"""Chunk outputs, chunk-parallel: O = scale * (Q h + tril(Q K^T) U~), with h the state entering the chunk.

One program per (block of BV value columns, chunk, head). tril keeps the diagonal: o_t reads the state
after token t's own update. Operands in the inputs' dtype, float32 accumulation.
"""

from __future__ import annotations

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
def output_kernel(
    q, k, h, u_tilde, o, cu_seqlens, chunk_indices, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, j = chunk_coordinates(i_c, chunk_indices, T, BT, IS_VARLEN)
    bos, seq_len = sequence_bounds(n, cu_seqlens, T, IS_VARLEN)
    rows = tl.arange(0, BT)

    p_q = tl.make_block_ptr(q + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                            (j * BT, 0), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                            (j * BT, 0), (BT, BK), (1, 0))
    p_h = tl.make_block_ptr(h + (i_c.to(tl.int64) * H + i_h) * K * V, (K, V), (V, 1),
                            (0, i_v * BV), (BK, BV), (1, 0))
    p_ut = tl.make_block_ptr(u_tilde + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                             (j * BT, i_v * BV), (BT, BV), (1, 0))
    p_o = tl.make_block_ptr(o + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                            (j * BT, i_v * BV), (BT, BV), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1))
    b_k = tl.load(p_k, boundary_check=(0, 1))
    b_h = tl.load(p_h, boundary_check=(0, 1))
    b_ut = tl.load(p_ut, boundary_check=(0, 1))
    b_o = dot(b_q, b_h, DOT_PRECISION)
    b_qk = dot(b_q, tl.trans(b_k), DOT_PRECISION)
    b_qk = tl.where(rows[:, None] >= rows[None, :], b_qk, 0.0).to(b_q.dtype)
    b_o += dot(b_qk, b_ut, DOT_PRECISION)
    tl.store(p_o, (scale * b_o).to(p_o.dtype.element_ty), boundary_check=(0, 1))


def output_fwd(q, k, h, u_tilde, scale, cu_seqlens, chunk_indices, num_chunks, seq_len, chunk_size,
               dot_precision, out_dtype):
    """q, k [B, T, H, K]; h [num_chunks, H, K, V]; U~ [B, T, H, V] -> o [B, T, H, V] in out_dtype."""
    H, K, V = q.shape[2], q.shape[3], u_tilde.shape[3]
    o = u_tilde.new_empty(u_tilde.shape, dtype=out_dtype)
    BV = min(block_dim(V), LAUNCH["output"]["block_v"])
    output_kernel[(cdiv(V, BV), num_chunks, H)](
        q, k, h, u_tilde, o, cu_seqlens, chunk_indices, scale,
        seq_len, H, K, V, chunk_size, block_dim(K), BV,
        IS_VARLEN=cu_seqlens is not None, DOT_PRECISION=dot_precision,
        num_warps=LAUNCH["output"]["num_warps"], num_stages=num_stages_for(q.dtype),
    )
    return o
