"""The SwiGLU gate on Triton: h = silu(g) * u elementwise, one pass each way.

Backward, with s = sigmoid(g):  du = dh * g s,  dg = dh * u * s (1 + g (1 - s)).
Eager PyTorch takes three launches forward (silu, mul, and the saved silu output) and three back; here the
forward reads g, u and writes h, the backward reads g, u, dh and writes dg, du. Float32 arithmetic, results
in the inputs' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.triton.common import call_op, cdiv, eager_autograd, kernel_op

BLOCK = 2048


@triton.jit
def swiglu_fwd_kernel(G, U, H, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n  # the last block is partial
    g = tl.load(G + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(H + offsets, (g * tl.sigmoid(g) * u).to(H.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(G, U, DH, DG, DU, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    g = tl.load(G + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offsets, mask=mask, other=0.0).to(tl.float32)
    dh = tl.load(DH + offsets, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(DU + offsets, (dh * g * s).to(DU.dtype.element_ty), mask=mask)
    tl.store(DG + offsets, (dh * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=mask)


@kernel_op("deltanet::swiglu_fwd")
def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: contiguous, same shape and dtype -> silu(gate) * up."""
    h = torch.empty_like(up)
    n = up.numel()
    swiglu_fwd_kernel[(cdiv(n, BLOCK),)](gate, up, h, n, BLOCK=BLOCK, num_warps=4)
    return h


@swiglu_fwd.register_fake
def _(gate, up):
    return torch.empty_like(up)


@kernel_op("deltanet::swiglu_bwd")
def swiglu_bwd(gate: torch.Tensor, up: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> d gate, d up."""
    dh = dh.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    n = up.numel()
    swiglu_bwd_kernel[(cdiv(n, BLOCK),)](gate, up, dh, dgate, dup, n, BLOCK=BLOCK, num_warps=4)
    return dgate, dup


@swiglu_bwd.register_fake
def _(gate, up, dh):
    return torch.empty_like(gate), torch.empty_like(up)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dh):
    gate, up = ctx.saved_tensors
    return call_op(swiglu_bwd, gate, up, dh)


swiglu_fwd.register_autograd(_backward, setup_context=_setup_context)
swiglu = eager_autograd(swiglu_fwd, _setup_context, _backward)
