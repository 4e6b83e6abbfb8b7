"""`chunk_delta_rule` on Triton: the forward and backward launches, registered as PyTorch custom ops.

Registering with torch.library (a fake implementation for shapes, and an autograd formula) lets the op
run inside torch.compile without a graph break.

Forward: `wy` (W, U per chunk, parallel), then the sequential state pass, which writes o itself
(the default, LAUNCH["state"]["fuse_output"]: faster at every measured shape) or writes h and U~ for the
parallel `output` launch. What it saves for the backward is LAUNCH["backward"]["saved"]:
- "inputs": only q, k, v, beta and the initial state; the backward recomputes W, U, (I + A)^-1, h and U~
  (two launches). Least memory.
- "intermediates": the forward also writes (I + A)^-1, h and U~ and keeps them with W and U, so the
  backward skips both recompute launches. At K = V = 128, C = 64, bf16 that is ~1.4 KB per token and head
  kept until the backward (W, U, U~ 256 B each, (I + A)^-1 128 B, h 512 B).
Then the backward runs the reverse state pass and the two per-chunk gradient launches.
"""

from __future__ import annotations

import torch

from deltanet.ops.backends import check_triton_dtype
from deltanet.ops.l2norm import l2_normalize
from deltanet.ops.triton.backward import chunk_bwd
from deltanet.ops.triton.common import LAUNCH, call_op, cdiv, chunk_tables, eager_autograd, kernel_op
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


def max_chunks(batch: int, seq_len: int, num_seqs: int, chunk_size: int, packed: bool) -> int:
    """An upper bound on the number of chunks known from shapes alone (the saved h's rows, which torch.compile
    must know without reading cu_seqlens): exact for fixed-length batches; for a packed row each document
    boundary can add at most one partial chunk."""
    if not packed:
        return batch * cdiv(seq_len, chunk_size)
    return cdiv(seq_len, chunk_size) + max(num_seqs - 1, 0)


def saves_intermediates() -> bool:
    """LAUNCH["backward"]["saved"]: "inputs" (False) or "intermediates" (True); anything else is an error."""
    saved = LAUNCH["backward"]["saved"]
    if saved not in ("inputs", "intermediates"):
        raise ValueError(f'LAUNCH["backward"]["saved"] must be "inputs" or "intermediates", got {saved!r}')
    return saved == "intermediates"


def _recompute_forward(k, v, beta, initial_state, cu_seqlens, chunk_size, dot_precision, plan):
    """The backward's recomputation:
    -> {w, u, a_inv: (I + A)^-1 [B, T, H, C], h [chunks, H, K, V], u_tilde}."""
    num_seqs, num_chunks, chunk_indices, chunk_offsets = plan
    T = k.shape[1]
    w, u, a_inv = wy_fwd(k, v, beta, cu_seqlens, chunk_indices, num_chunks, T, chunk_size, dot_precision,
                         store_a_inv=True)
    _, h, u_tilde, _ = _state_fwd(k, w, u, initial_state, False, cu_seqlens, chunk_size, dot_precision, plan)
    return {"w": w, "u": u, "a_inv": a_inv, "h": h, "u_tilde": u_tilde}


@kernel_op("deltanet::chunk_delta_rule_fwd")
def chunk_delta_rule_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float,
    initial_state: torch.Tensor | None, output_final_state: bool, cu_seqlens: torch.Tensor | None,
    chunk_size: int, dot_precision: str, save_intermediates: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> o [B, T, H, V] like v, final state [N, H, K, V] float32 (empty [0] when not asked for), then
    for the backward W, U, (I + A)^-1 [B, T, H, C], h [max_chunks, H, K, V], U~ (each empty [0] unless
    save_intermediates)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    plan = _plan(q, cu_seqlens, chunk_size)
    num_seqs, num_chunks, chunk_indices, chunk_offsets = plan
    w, u, a_inv = wy_fwd(k, v, beta, cu_seqlens, chunk_indices, num_chunks, T, chunk_size, dot_precision,
                         store_a_inv=save_intermediates)
    h_rows = max_chunks(B, T, num_seqs, chunk_size, cu_seqlens is not None)
    state_plan = (num_seqs, h_rows, chunk_indices, chunk_offsets)
    if fuse_output_in_state_pass(V, K, num_seqs, H, q.device):
        o, h, u_tilde, final_state = _state_fwd(
            k, w, u, initial_state, output_final_state, cu_seqlens, chunk_size, dot_precision, state_plan,
            q=q, scale=scale, out_dtype=v.dtype, store_states=save_intermediates,
        )
    else:
        _, h, u_tilde, final_state = _state_fwd(k, w, u, initial_state, output_final_state, cu_seqlens,
                                                chunk_size, dot_precision, state_plan)
        o = output_fwd(q, k, h, u_tilde, scale, cu_seqlens, chunk_indices, num_chunks, T, chunk_size,
                       dot_precision, v.dtype)
    if final_state is None:
        final_state = q.new_empty(0, dtype=torch.float32)
    if not save_intermediates:  # outputs of a custom op may not alias each other: five empties
        return (o, final_state, *(q.new_empty(0) for _ in range(5)))
    return o, final_state, w, u, a_inv, h, u_tilde


@chunk_delta_rule_fwd.register_fake
def _(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, dot_precision,
      save_intermediates):
    B, T, H, K = q.shape
    V = v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    final_shape = (N, H, K, V) if output_final_state else (0,)
    o, final_state = torch.empty_like(v), q.new_empty(final_shape, dtype=torch.float32)
    if not save_intermediates:
        return (o, final_state, *(q.new_empty(0) for _ in range(5)))
    h_rows = max_chunks(B, T, N, chunk_size, cu_seqlens is not None)
    return (o, final_state, torch.empty_like(k), torch.empty_like(v), k.new_empty(B, T, H, chunk_size),
            k.new_empty(h_rows, H, K, V), torch.empty_like(v))


@kernel_op("deltanet::chunk_delta_rule_bwd")
def chunk_delta_rule_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None, chunk_size: int,
    dot_precision: str, do: torch.Tensor, dht: torch.Tensor | None, need_initial_state_grad: bool,
    w: torch.Tensor | None, u: torch.Tensor | None, a_inv: torch.Tensor | None, h: torch.Tensor | None,
    u_tilde: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dk, dv, dbeta, and the initial state's gradient (empty [0] when not needed).
    w, u, a_inv, h, u_tilde: the forward's saved intermediates, or all None to recompute them."""
    T = q.shape[1]
    plan = _plan(q, cu_seqlens, chunk_size)
    num_seqs, num_chunks, chunk_indices, chunk_offsets = plan
    if h is None:
        recomputed = _recompute_forward(k, v, beta, initial_state, cu_seqlens, chunk_size, dot_precision,
                                        plan)
    else:
        recomputed = {"w": w, "u": u, "a_inv": a_inv, "h": h, "u_tilde": u_tilde}
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
      need_initial_state_grad, w, u, a_inv, h, u_tilde):
    if need_initial_state_grad:
        dh0 = torch.empty_like(initial_state, dtype=torch.float32)
    else:
        dh0 = q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta), dh0


def _setup_context(ctx, inputs, output):
    (q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, dot_precision,
     save_intermediates) = inputs
    intermediates = output[2:] if save_intermediates else (None,) * 5
    ctx.save_for_backward(q, k, v, beta, initial_state, cu_seqlens, *intermediates)
    ctx.scale, ctx.chunk_size, ctx.dot_precision = scale, chunk_size, dot_precision
    ctx.output_final_state = output_final_state
    # The intermediates are outputs only to be saved: no gradient flows into them, and none is made up.
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)


def _backward(ctx, do, dht, *intermediates_grads):
    q, k, v, beta, initial_state, cu_seqlens, *intermediates = ctx.saved_tensors
    need_h0_grad = initial_state is not None and ctx.needs_input_grad[5]
    dht = dht.contiguous() if ctx.output_final_state and dht is not None else None
    if do is None:  # o did not reach the loss (only the final state did)
        do = torch.zeros_like(v)
    dq, dk, dv, dbeta, dh0 = call_op(
        chunk_delta_rule_bwd, q, k, v, beta, ctx.scale, initial_state, cu_seqlens, ctx.chunk_size,
        ctx.dot_precision, do.contiguous(), dht, need_h0_grad, *intermediates,
    )
    return dq, dk, dv, dbeta, None, (dh0 if need_h0_grad else None), None, None, None, None, None


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
    # Intermediates are worth saving only for a backward that will run.
    save = saves_intermediates() and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, beta, initial_state))
    o, final_state, *_ = chunk_delta_rule_op(
        q, k, v, beta, float(scale), initial_state, bool(output_final_state), cu_seqlens, chunk_size,
        dot_precision, save,
    )
    return o, (final_state if output_final_state else None)
