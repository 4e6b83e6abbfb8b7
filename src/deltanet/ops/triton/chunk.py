"""`chunk_delta_rule` on Triton: the forward and backward launches, registered as PyTorch custom ops.

Registering with torch.library (a fake implementation for shapes, and an autograd formula) lets the op
run inside torch.compile without a graph break.

Forward: `wy` (W, U per chunk, parallel), then the sequential state pass, which writes o itself
(the default, LAUNCH["state"]["fuse_output"]: faster at every measured shape) or writes h and U~ for the
parallel `output` launch. It
saves only q, k, v, beta and the initial state. Backward: recompute W, U, (I + A)^-1, h and U~ (two
launches), the reverse state pass, then the two per-chunk gradient launches.
"""

from __future__ import annotations

import torch

from deltanet.ops.backends import check_triton_dtype
from deltanet.ops.l2norm import l2_normalize
from deltanet.ops.triton.backward import chunk_bwd
from deltanet.ops.triton.common import call_op, chunk_tables, eager_autograd, kernel_op
from deltanet.ops.triton.output import output_fwd
from deltanet.ops.triton.state import fuse_output_in_state_pass, state_bwd, state_fwd
from deltanet.ops.triton.wy import wy_fwd

SUPPORTED_CHUNK_SIZES = (16, 32, 64)


def _plan(q, cu_seqlens, chunk_size):
    B, T = q.shape[:2]
    num_chunks, chunk_indices, chunk_offsets = chunk_tables(cu_seqlens, B, T, chunk_size)
    num_seqs = B if cu_seqlens is None else cu_seqlens.numel() - 1
    return num_seqs, num_chunks, chunk_indices, chunk_offsets


def _state_fwd(k, w, u, initial_state, output_final_state, cu_seqlens, chunk_size, dot_precision, plan,
               **fused):
    """state.state_fwd with the plan's sizes."""
    num_seqs, num_chunks, _, chunk_offsets = plan
    return state_fwd(k, w, u, initial_state, output_final_state, cu_seqlens, chunk_offsets, num_seqs,
                     num_chunks, k.shape[1], chunk_size, dot_precision, **fused)


def _recompute_forward(k, v, beta, initial_state, cu_seqlens, chunk_size, dot_precision, plan):
    """The backward's recomputation:
    -> {w, u, a_inv: (I + A)^-1 [B, T, H, C], h [chunks, H, K, V], u_tilde}."""
    num_seqs, num_chunks, chunk_indices, chunk_offsets = plan
    T = k.shape[1]
    w, u, a_inv = wy_fwd(k, v, beta, cu_seqlens, chunk_indices, num_chunks, T, chunk_size, dot_precision,
                         store_a_inv=True)
    h, u_tilde, _ = _state_fwd(k, w, u, initial_state, False, cu_seqlens, chunk_size, dot_precision, plan)
    return {"w": w, "u": u, "a_inv": a_inv, "h": h, "u_tilde": u_tilde}


@kernel_op("deltanet::chunk_delta_rule_fwd")
def chunk_delta_rule_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float,
    initial_state: torch.Tensor | None, output_final_state: bool, cu_seqlens: torch.Tensor | None,
    chunk_size: int, dot_precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> o [B, T, H, V] like v, final state [N, H, K, V] float32 (empty [0] when not asked for)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    plan = _plan(q, cu_seqlens, chunk_size)
    num_seqs, num_chunks, chunk_indices, chunk_offsets = plan
    w, u, _ = wy_fwd(k, v, beta, cu_seqlens, chunk_indices, num_chunks, T, chunk_size, dot_precision)
    if fuse_output_in_state_pass(V, K, num_seqs, H, q.device):
        o, _, final_state = _state_fwd(k, w, u, initial_state, output_final_state, cu_seqlens, chunk_size,
                                       dot_precision, plan, q=q, scale=scale, out_dtype=v.dtype)
    else:
        h, u_tilde, final_state = _state_fwd(k, w, u, initial_state, output_final_state, cu_seqlens,
                                             chunk_size, dot_precision, plan)
        o = output_fwd(q, k, h, u_tilde, scale, cu_seqlens, chunk_indices, num_chunks, T, chunk_size,
                       dot_precision, v.dtype)
    if final_state is None:
        final_state = q.new_empty(0, dtype=torch.float32)
    return o, final_state


@chunk_delta_rule_fwd.register_fake
def _(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, dot_precision):
    N = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    final_shape = (N, q.shape[2], q.shape[3], v.shape[3]) if output_final_state else (0,)
    return torch.empty_like(v), q.new_empty(final_shape, dtype=torch.float32)


@kernel_op("deltanet::chunk_delta_rule_bwd")
def chunk_delta_rule_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None, chunk_size: int,
    dot_precision: str, do: torch.Tensor, dht: torch.Tensor | None, need_initial_state_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dk, dv, dbeta, and the initial state's gradient (empty [0] when not needed)."""
    T = q.shape[1]
    plan = _plan(q, cu_seqlens, chunk_size)
    num_seqs, num_chunks, chunk_indices, chunk_offsets = plan
    recomputed = _recompute_forward(k, v, beta, initial_state, cu_seqlens, chunk_size, dot_precision, plan)
    recomputed["dh"], recomputed["du_tilde"], dh0 = state_bwd(
        q, k, recomputed["w"], do, dht, need_initial_state_grad, scale, cu_seqlens, chunk_offsets,
        num_seqs, num_chunks, T, chunk_size, dot_precision,
    )
    dq, dk, dv, dbeta = chunk_bwd(q, k, v, beta, do, recomputed, scale, cu_seqlens, chunk_indices, num_chunks,
                                  T, chunk_size, dot_precision)
    if dh0 is None:
        dh0 = q.new_empty(0, dtype=torch.float32)
    return dq, dk, dv, dbeta, dh0


@chunk_delta_rule_bwd.register_fake
def _(q, k, v, beta, scale, initial_state, cu_seqlens, chunk_size, dot_precision, do, dht,
      need_initial_state_grad):
    if need_initial_state_grad:
        dh0 = torch.empty_like(initial_state, dtype=torch.float32)
    else:
        dh0 = q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta), dh0


def _setup_context(ctx, inputs, output):
    q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, dot_precision = inputs
    ctx.save_for_backward(q, k, v, beta, initial_state, cu_seqlens)
    ctx.scale, ctx.chunk_size, ctx.dot_precision = scale, chunk_size, dot_precision
    ctx.output_final_state = output_final_state


def _backward(ctx, do, dht):
    q, k, v, beta, initial_state, cu_seqlens = ctx.saved_tensors
    need_h0_grad = initial_state is not None and ctx.needs_input_grad[5]
    dht = dht.contiguous() if ctx.output_final_state and dht is not None else None
    dq, dk, dv, dbeta, dh0 = call_op(
        chunk_delta_rule_bwd, q, k, v, beta, ctx.scale, initial_state, cu_seqlens, ctx.chunk_size,
        ctx.dot_precision, do.contiguous(), dht, need_h0_grad,
    )
    return dq, dk, dv, dbeta, None, (dh0 if need_h0_grad else None), None, None, None, None


chunk_delta_rule_fwd.register_autograd(_backward, setup_context=_setup_context)
chunk_delta_rule_op = eager_autograd(chunk_delta_rule_fwd, _setup_context, _backward)


def chunk_delta_rule_triton(
    q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, use_qk_l2norm,
    allow_tf32=True,
):
    """Validated arguments in, (o, final_state or None) out; see `deltanet.ops.chunk_delta_rule`."""
    check_triton_dtype(v, "v")
    if chunk_size not in SUPPORTED_CHUNK_SIZES:
        raise ValueError(
            f"backend='triton' supports chunk_size in {SUPPORTED_CHUNK_SIZES}, got {chunk_size}"
        )
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    # One operand dtype for the matrix units: v's (which is also o's). beta keeps its own dtype.
    q, k = q.to(v.dtype).contiguous(), k.to(v.dtype).contiguous()
    v, beta = v.contiguous(), beta.contiguous()
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    # float32 inputs: tf32 products of operands rounded to nearest first (the tensor cores' own conversion
    # truncates, which doubled the error; common.round_to_tf32); with allow_tf32=False, float32 accuracy from
    # three tf32 products of split operands (hi*hi + hi*lo + lo*hi, Triton's "tf32x3"): plain float32
    # ("ieee") products compile to unrolled FMA code whose build took minutes per kernel. bf16/fp16 inputs:
    # their own products; float32 intermediates in tf32.
    if v.dtype != torch.float32:
        dot_precision = "tf32"
    else:
        dot_precision = "tf32_round" if allow_tf32 else "tf32x3"
    o, final_state = chunk_delta_rule_op(
        q, k, v, beta, float(scale), initial_state, bool(output_final_state), cu_seqlens, chunk_size,
        dot_precision,
    )
    return o, (final_state if output_final_state else None)
