"""The delta rule in chunkwise-parallel form, and the public `chunk_delta_rule` that picks a backend.

Derivation (per head; checked against `recurrent_delta_rule` in tests/test_ops.py). Inside a chunk
of C tokens with incoming state S, write the update as S_t = S + sum_{i<=t} k_i u~_i^T, where
u~_t = beta_t (v_t - S_{t-1}^T k_t). Substituting S_{t-1} gives, row by row,

    u~_t + beta_t sum_{i<t} (k_t . k_i) u~_i = beta_t (v_t - S^T k_t)

that is (I + A) U~ = diag(beta) (V - K S) with A = tril(diag(beta) K K^T, -1). So with
T = (I + A)^-1 diag(beta) (the UT transform; I + A is unit lower triangular, so this is a forward
substitution), W = T K and U = T V:

    U~ = U - W S
    O  = scale * (Q S + tril(Q K^T) U~)          (tril keeps the diagonal: o_t sees its own update)
    S <- S + K^T U~

W and U depend only on the chunk's own tokens, so they are computed for all chunks at once; only the
short loop over chunks that carries S is sequential. Memory is O(T * C) per head: no [T, T] matrix.
"""

from __future__ import annotations

import torch

from deltanet.ops.backends import BACKENDS, default_backend
from deltanet.ops.host_offsets import host_offsets
from deltanet.ops.l2norm import l2_normalize
from deltanet.ops.validation import (
    check_chunk_size,
    check_delta_rule_inputs,
    resolve_scale,
    state_dtype_for,
)


def _pad_time(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad dim 1 (time) up to a multiple. Zero keys and betas leave the state unchanged."""
    pad = (-x.shape[1]) % multiple
    if pad == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)


def chunk_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    state: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise delta rule on equal-length sequences, in the dtype of its (already cast) inputs.

    q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H]; state [B, H, K, V]. Returns o [B, T, H, V] and
    the final state [B, H, K, V]. Differentiable by autograd, which keeps one [K, V] state per chunk.
    """
    B, T, H, K = q.shape
    C = chunk_size
    # [B, T, H, d] -> [B, H, NC, C, d]
    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        x = _pad_time(x, C)
        return x.reshape(B, -1, C, H, *x.shape[3:]).movedim(3, 1)

    qc, kc, vc = to_chunks(q), to_chunks(k), to_chunks(v)
    bc = to_chunks(beta)[..., None]  # [B, H, NC, C, 1]
    num_chunks = qc.shape[2]

    # Intra-chunk WY representation for every chunk at once.
    k_beta = kc * bc
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(0)
    unit_lower = (k_beta @ kc.transpose(-1, -2)).masked_fill(~strictly_lower, 0)
    unit_lower = unit_lower + torch.eye(C, dtype=q.dtype, device=q.device)  # I + A
    rhs = torch.cat([k_beta, vc * bc], dim=-1)
    # One batch dimension: torch 2.13's CPU solve_triangular is ~30x slower with several (0.6 s instead of
    # 22 ms for 16 x 4 x 4 systems of 64).
    wu = torch.linalg.solve_triangular(
        unit_lower.reshape(-1, C, C), rhs.reshape(-1, C, rhs.shape[-1]), upper=False, unitriangular=True
    ).view(rhs.shape)
    w, u = wu[..., :K], wu[..., K:]  # W = T K [.., C, K], U = T V [.., C, V]
    qk = (qc @ kc.transpose(-1, -2)).masked_fill(~lower, 0)  # tril(Q K^T) with the diagonal

    # The sequential part: carry S across chunks, keeping the state each chunk starts from.
    states, corrected = [], []
    for n in range(num_chunks):
        states.append(state)
        u_tilde = u[:, :, n] - w[:, :, n] @ state  # [B, H, C, V]
        corrected.append(u_tilde)
        state = state + kc[:, :, n].transpose(-1, -2) @ u_tilde
    chunk_states = torch.stack(states, dim=2)  # [B, H, NC, K, V]
    u_tilde = torch.stack(corrected, dim=2)  # [B, H, NC, C, V]
    o = scale * (qc @ chunk_states + qk @ u_tilde)  # [B, H, NC, C, V]
    o = o.movedim(1, 3).reshape(B, num_chunks * C, H, -1)[:, :T]
    return o, state


def _pack_index(cu_seqlens: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For packed tokens: (sequence index, position in sequence) per token, and the longest length."""
    lengths = torch.tensor([b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])], device=device)
    starts = torch.tensor(cu_seqlens[:-1], device=device)
    seq_index = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    position = torch.arange(cu_seqlens[-1], device=device) - starts[seq_index]
    return seq_index, position, int(lengths.max())


def _chunk_varlen_torch(q, k, v, beta, scale, state, chunk_size, cu_seqlens):
    """Packed sequences: scatter into a zero-padded [N, L_max] batch, run, gather back.

    Zero padding after each sequence has k = 0 and beta = 0, which leaves its state unchanged, so the
    final states are exact. Memory is N * L_max: fine unless lengths are very uneven.
    """
    seq_index, position, max_len = _pack_index(host_offsets(cu_seqlens), q.device)
    num_sequences = state.shape[0]

    def unpack(x: torch.Tensor) -> torch.Tensor:
        padded = x.new_zeros(num_sequences, max_len, *x.shape[2:])
        return padded.index_put((seq_index, position), x[0])

    o, final_state = chunk_delta_rule_torch(
        unpack(q), unpack(k), unpack(v), unpack(beta), scale, state, chunk_size
    )
    return o[seq_index, position][None], final_state


def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str | None = None,
    use_qk_l2norm: bool = False,
    allow_tf32: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule in chunkwise-parallel form; same result as `recurrent_delta_rule`, much faster.

    Args:
        q, k: queries and keys, [B, T, H, K]; float64, float32, bfloat16 or float16.
        v: values, [B, T, H, V]; K and V may differ, each up to 256.
        beta: write strengths, [B, T, H] (in [0, 2] for a bounded state with unit-norm keys).
        scale: output scale, defaults to K ** -0.5.
        initial_state: [N, H, K, V] state before the first token (N = B, or the number of sequences in
            cu_seqlens); None means zeros. Receives gradients.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: int32/int64 [N + 1] cumulative lengths of sequences packed along T (the
            FlashAttention convention; B must be 1). Packed sequences never share state.
        chunk_size: tokens per chunk C, a positive power of two (default 64). Any T is accepted.
        backend: None picks the fastest for the tensors' device; "torch" forces PyTorch; "triton" the
            GPU kernels.
        use_qk_l2norm: L2-normalise q and k over K inside the op (gradients flow through it).
        allow_tf32: Triton backend with float32 inputs: matrix products in tf32 with operands rounded to
            nearest (default; 7e-4 norm-wise relative error measured on an H100, docs/kernels.md) or, if
            False, at float32 accuracy: each product as three tf32 products of split operands (~1e-6
            relative per product, Triton's "tf32x3"), not IEEE float32 FMAs, whose GPU build takes minutes.

    Returns:
        o [B, T, H, V] in v's dtype, and the final state [N, H, K, V] or None. The PyTorch backend
        computes in float32 (float64 when all inputs are float64); states are float32 (float64).
        The Triton backend (float32, bfloat16, float16; chunk_size 16, 32 or 64) multiplies in the
        inputs' dtype (tf32 for float32 unless allow_tf32=False) and accumulates and keeps states in
        float32.
    """
    shape = check_delta_rule_inputs(q, k, v, beta, initial_state, cu_seqlens)
    check_chunk_size(chunk_size)
    scale = resolve_scale(scale, shape.key_dim)
    if backend is None:
        backend = default_backend(q.device, v.dtype)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        from deltanet.ops.triton.chunk import chunk_delta_rule_triton

        return chunk_delta_rule_triton(
            q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, use_qk_l2norm,
            allow_tf32,
        )

    compute_dtype = state_dtype_for(q, k, v, beta)
    if use_qk_l2norm:  # the PyTorch path stays PyTorch throughout: it is the reference for the kernels
        q, k = l2_normalize(q, backend="torch"), l2_normalize(k, backend="torch")
    qc, kc, vc, bc = (t.to(compute_dtype) for t in (q, k, v, beta))
    N, H, K, V = shape.num_sequences, shape.num_heads, shape.key_dim, shape.value_dim
    if initial_state is None:
        state = q.new_zeros(N, H, K, V, dtype=compute_dtype)
    else:
        state = initial_state.to(compute_dtype)
    if cu_seqlens is None:
        o, final_state = chunk_delta_rule_torch(qc, kc, vc, bc, scale, state, chunk_size)
    else:
        o, final_state = _chunk_varlen_torch(qc, kc, vc, bc, scale, state, chunk_size, cu_seqlens)
    return o.to(v.dtype), (final_state if output_final_state else None)
