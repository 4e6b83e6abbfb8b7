"""The UT transform, chunk-parallel: W = (I + A)^-1 diag(beta) K and U = (I + A)^-1 diag(beta) V.

A = tril(diag(beta) K K^T, -1) for each chunk of BT tokens. One program per (chunk, head) builds A with
one matrix product, inverts I + A by recursive doubling (common.unit_lower_inverse), and writes W and U
in the inputs' dtype (and, for the backward, the inverse). Nothing here depends on the state, so all
chunks run at once.

Numerics: K K^T and the products with (I + A)^-1 take operands in the inputs' dtype (bf16/fp16 on the
tensor cores), accumulating in float32. The inverse is float32, its products in tf32 unless full
precision is asked for (allow_tf32=False), as are all products of float32 inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.triton.common import (
    LAUNCH,
    block_dim,
    chunk_coordinates,
    dot,
    num_stages_for,
    sequence_bounds,
    unit_lower_inverse,
)


@triton.jit
def chunk_unit_lower_inverse(k_block_ptr, b_beta, BT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                             INVERSE_BY_BLOCKS: tl.constexpr):
    """Load a chunk's keys, return ((I + A)^-1 in float32 [BT, BT], keys [BT, BK], beta*keys [BT, BK])."""
    b_k = tl.load(k_block_ptr, boundary_check=(0, 1))
    b_kb = (b_k * b_beta[:, None]).to(b_k.dtype)
    rows = tl.arange(0, BT)
    A = dot(b_kb, tl.trans(b_k), DOT_PRECISION)
    A = tl.where(rows[:, None] > rows[None, :], A, 0.0)  # strictly lower: token i sees earlier j only
    return unit_lower_inverse(A, BT, DOT_PRECISION, INVERSE_BY_BLOCKS), b_k, b_kb


@triton.jit
def wy_fwd_kernel(
    k, v, beta, w, u, a_inv, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    STORE_A_INV: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    INVERSE_BY_BLOCKS: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    n, j = chunk_coordinates(i_c, chunk_indices, T, BT, IS_VARLEN)
    bos, seq_len = sequence_bounds(n, cu_seqlens, T, IS_VARLEN)

    # boundary_check zero-fills rows past the sequence end: zero beta keeps them out of A, W and U.
    p_beta = tl.make_block_ptr(beta + bos * H + i_h, (seq_len,), (H,), (j * BT,), (BT,), (0,))
    b_beta = tl.load(p_beta, boundary_check=(0,)).to(tl.float32)
    p_k = tl.make_block_ptr(k + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                            (j * BT, 0), (BT, BK), (1, 0))
    L_inv, b_k, b_kb = chunk_unit_lower_inverse(p_k, b_beta, BT, DOT_PRECISION, INVERSE_BY_BLOCKS)
    b_L = L_inv.to(b_k.dtype)
    if STORE_A_INV:
        # for the backward, which needs (I + A)^-1 again: [B, T, H, BT], row t of its chunk's inverse
        p_a = tl.make_block_ptr(a_inv + (bos * H + i_h) * BT, (seq_len, BT), (H * BT, 1),
                                (j * BT, 0), (BT, BT), (1, 0))
        tl.store(p_a, b_L, boundary_check=(0, 1))

    p_w = tl.make_block_ptr(w + bos * H * K + i_h * K, (seq_len, K), (H * K, 1),
                            (j * BT, 0), (BT, BK), (1, 0))
    b_w = dot(b_L, b_kb, DOT_PRECISION)
    tl.store(p_w, b_w.to(p_w.dtype.element_ty), boundary_check=(0, 1))
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                                (j * BT, i_v * BV), (BT, BV), (1, 0))
        p_u = tl.make_block_ptr(u + bos * H * V + i_h * V, (seq_len, V), (H * V, 1),
                                (j * BT, i_v * BV), (BT, BV), (1, 0))
        b_v = tl.load(p_v, boundary_check=(0, 1))
        b_vb = (b_v * b_beta[:, None]).to(b_v.dtype)
        b_u = dot(b_L, b_vb, DOT_PRECISION)
        tl.store(p_u, b_u.to(p_u.dtype.element_ty), boundary_check=(0, 1))


def inverse_by_blocks() -> bool:
    """LAUNCH["wy"]["inverse"]: "doubling" (False) or "blocks16" (True); anything else is an error."""
    inverse = LAUNCH["wy"]["inverse"]
    if inverse not in ("doubling", "blocks16"):
        raise ValueError(f'LAUNCH["wy"]["inverse"] must be "doubling" or "blocks16", got {inverse!r}')
    return inverse == "blocks16"


def wy_fwd(k, v, beta, cu_seqlens, chunk_indices, num_chunks, seq_len, chunk_size, dot_precision,
           store_a_inv=False):
    """k [B, T, H, K], v [B, T, H, V], beta [B, T, H] (contiguous) -> W like k, U like v, and with
    store_a_inv the chunks' (I + A)^-1 as [B, T, H, chunk_size] in k's dtype (else None)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    w, u = torch.empty_like(k), torch.empty_like(v)
    a_inv = k.new_empty(B, T, H, chunk_size) if store_a_inv else None
    BV = min(block_dim(V), LAUNCH["wy"]["block_v"])
    wy_fwd_kernel[(num_chunks, H)](
        k, v, beta, w, u, a_inv, cu_seqlens, chunk_indices,
        seq_len, H, K, V, chunk_size, block_dim(K), BV,
        STORE_A_INV=store_a_inv, IS_VARLEN=cu_seqlens is not None, DOT_PRECISION=dot_precision,
        INVERSE_BY_BLOCKS=inverse_by_blocks(),
        num_warps=LAUNCH["wy"]["num_warps"], num_stages=num_stages_for(k.dtype),
    )
    return w, u, a_inv
