"""Cross-entropy over a large vocabulary on Triton, reading the logits in their own dtype.

Per row n with logits x [V] and target t (rows with t = ignore_index count for nothing):

    lse_n = log sum_j exp(x_j)  (online: running max m and sum s over blocks of the row),
    loss_n = lse_n - x_t,
    d loss_n / d x_j = exp(x_j - lse_n) - [j = t].

Arithmetic is float32 whatever the logits' dtype, so bf16 logits need no float32 copy (2 bytes x N x V saved
each way, 2 GB at 16K tokens and a 32K vocabulary). The forward saves the logits and lse [N] float32; the
backward writes the gradient in the logits' dtype in one pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.triton.common import call_op, eager_autograd, kernel_op, next_power_of_2

BLOCK_VOCAB = 4096


@triton.jit
def cross_entropy_fwd_kernel(
    LOGITS, targets, LOSS, LSE, V, stride_row, ignore_index, BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    row_logits = LOGITS + row * stride_row
    target = tl.load(targets + row).to(tl.int32)
    cols = tl.arange(0, BLOCK_V)
    running_max = tl.full([BLOCK_V], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    # Lane-wise online logsumexp: each lane keeps its own max and sum; the lanes are combined at the end.
    for start in range(0, V, BLOCK_V):
        x = tl.load(row_logits + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, x)
        # A lane that has seen only -inf (padding) keeps max -inf; exp(-inf - -inf) would be NaN.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + tl.exp(x - safe_max)
        running_max = new_max
    row_max = tl.max(running_max, axis=0)
    lse = row_max + tl.log(tl.sum(running_sum * tl.exp(running_max - row_max), axis=0))
    valid = target != ignore_index
    in_range = (target >= 0) & (target < V)
    # A target outside [0, V) (and not ignore_index) gives a NaN loss instead of a read outside the row; a
    # host-side check would make every call wait for the GPU.
    target_logit = tl.load(row_logits + tl.where(valid & in_range, target, 0)).to(tl.float32)
    loss = tl.where(in_range, lse - target_logit, float("nan"))
    tl.store(LOSS + row, tl.where(valid, loss, 0.0))
    tl.store(LSE + row, lse)


@triton.jit
def cross_entropy_bwd_kernel(
    LOGITS, targets, LSE, DLOGITS, DLOSS, V, stride_row, ignore_index, BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets + row).to(tl.int32)
    lse = tl.load(LSE + row)
    valid = target != ignore_index
    scale = tl.where(valid, tl.load(DLOSS + row), 0.0)  # d total / d loss_n
    scale = tl.where(valid & ((target < 0) | (target >= V)), float("nan"), scale)  # as the forward's NaN
    cols = tl.arange(0, BLOCK_V)
    for start in range(0, V, BLOCK_V):
        mask = start + cols < V
        x = tl.load(LOGITS + row * stride_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        grad = (tl.exp(x - lse) - tl.where(start + cols == target, 1.0, 0.0)) * scale
        tl.store(DLOGITS + row * V + start + cols, grad.to(DLOGITS.dtype.element_ty), mask=mask)


@kernel_op("deltanet::cross_entropy_fwd")
def cross_entropy_fwd(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, V] (last dim contiguous), targets int [N] -> per-row loss [N] float32 (0 where ignored),
    lse [N] float32."""
    N, V = logits.shape
    loss = torch.empty(N, device=logits.device, dtype=torch.float32)
    lse = torch.empty(N, device=logits.device, dtype=torch.float32)
    cross_entropy_fwd_kernel[(N,)](logits, targets, loss, lse, V, logits.stride(0), ignore_index,
                                   BLOCK_V=min(BLOCK_VOCAB, next_power_of_2(V)), num_warps=8)
    return loss, lse


@cross_entropy_fwd.register_fake
def _(logits, targets, ignore_index):
    N = logits.shape[0]
    return logits.new_empty(N, dtype=torch.float32), logits.new_empty(N, dtype=torch.float32)


@kernel_op("deltanet::cross_entropy_bwd")
def cross_entropy_bwd(
    logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, dloss: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """-> d logits [N, V] in the logits' dtype, from dloss [N] float32, the gradient of each row's loss."""
    N, V = logits.shape
    dlogits = torch.empty(N, V, device=logits.device, dtype=logits.dtype)
    cross_entropy_bwd_kernel[(N,)](logits, targets, lse, dlogits, dloss, V, logits.stride(0), ignore_index,
                                   BLOCK_V=min(BLOCK_VOCAB, next_power_of_2(V)), num_warps=8)
    return dlogits


@cross_entropy_bwd.register_fake
def _(logits, targets, lse, dloss, ignore_index):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.ignore_index = ignore_index


def _backward(ctx, dloss, _dlse):
    logits, targets, lse = ctx.saved_tensors
    dlogits = call_op(cross_entropy_bwd, logits, targets, lse, dloss.float().contiguous(), ctx.ignore_index)
    return dlogits, None, None


cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)
cross_entropy_rows = eager_autograd(cross_entropy_fwd, _setup_context, _backward)
