"""Row normalisation on Triton: RMSNorm (with an optional weight and SiLU output gate) and L2 normalisation.

Both are one formula over the last dim of x [N, D], with inv_n = 1/D for RMSNorm and 1 for L2:

    r = (inv_n * sum_j x_j^2 + eps)^(-1/2),   x^ = r x,   y = x^ * w * silu(g)   (w and g optional)

Backward, with dy' = dy * silu(g) and dx^ = dy' * w:

    dx = r (dx^ - x^ * inv_n * sum_j dx^_j x^_j),   dw = sum_rows dy' x^,
    dg = dy * x^ w * silu'(g),                       silu'(g) = s (1 + g (1 - s)),  s = sigmoid(g).

Statistics and arithmetic are float32 whatever the input dtype; y is written in the dtype asked for (under
autocast, the matmul dtype, so that the next projection needs no cast). The forward saves r [N] float32.
One launch forward, one backward; the backward's grid is persistent so that each program sums its rows'
share of dw in registers, and the [programs, D] partial sums are added by torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.backends import check_triton_dtype
from deltanet.ops.triton.common import (
    call_op,
    cdiv,
    eager_autograd,
    kernel_op,
    multiprocessor_count,
    next_power_of_2,
)

# Elements of x per program tile: enough rows to fill 4 warps for narrow rows (head norms, D = 128).
TILE_ELEMENTS = 4096


@triton.jit
def row_norm_fwd_kernel(
    X, W, G, Y, RSTD,
    N, D, inv_n, eps,
    HAS_WEIGHT: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_in = rows < N
    col_in = cols < D
    mask = row_in[:, None] & col_in[None, :]  # padding columns load 0 and add nothing to the sum
    offsets = rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) * inv_n + eps)
    y = x * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(W + cols, mask=col_in, other=0.0).to(tl.float32)[None, :]
    if HAS_GATE:
        g = tl.load(G + offsets, mask=mask, other=0.0).to(tl.float32)
        y = y * g * tl.sigmoid(g)
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_in)


@triton.jit
def row_norm_bwd_kernel(
    X, W, G, DY, RSTD, DX, DG, DW_PARTIAL,
    N, D, inv_n, blocks_per_program,
    HAS_WEIGHT: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_in = cols < D
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_in, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(blocks_per_program):
        rows = (pid * blocks_per_program + i) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_in = rows < N
        mask = row_in[:, None] & col_in[None, :]  # rows past N load zeros: they add nothing to dw
        offsets = rows.to(tl.int64)[:, None] * D + cols[None, :]
        x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_in, other=0.0)
        x_hat = x * rstd[:, None]
        if HAS_GATE:
            g = tl.load(G + offsets, mask=mask, other=0.0).to(tl.float32)
            s = tl.sigmoid(g)
            if HAS_WEIGHT:
                normed = x_hat * w[None, :]
            else:
                normed = x_hat
            dg = dy * normed * s * (1.0 + g * (1.0 - s))
            tl.store(DG + offsets, dg.to(DG.dtype.element_ty), mask=mask)
            dy = dy * g * s
        if HAS_WEIGHT:
            dw += tl.sum(dy * x_hat, axis=0)
            dx_hat = dy * w[None, :]
        else:
            dx_hat = dy
        dx = rstd[:, None] * (dx_hat - x_hat * (tl.sum(dx_hat * x_hat, axis=1) * inv_n)[:, None])
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_WEIGHT:
        tl.store(DW_PARTIAL + pid.to(tl.int64) * D + cols, dw, mask=col_in)


def _tiles(D: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_ROWS, num_warps) for rows of width D."""
    block_d = next_power_of_2(D)
    block_rows = max(1, TILE_ELEMENTS // block_d)
    return block_d, block_rows, 8 if block_d >= 4096 else 4


@kernel_op("deltanet::row_norm_fwd")
def row_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor | None, gate: torch.Tensor | None, inv_n: float, eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D] contiguous (gate likewise), weight [D] or None -> y [N, D] out_dtype, rstd [N] float32."""
    N, D = x.shape
    y = torch.empty(N, D, device=x.device, dtype=out_dtype)
    rstd = torch.empty(N, device=x.device, dtype=torch.float32)
    block_d, block_rows, num_warps = _tiles(D)
    if N == 0:
        return y, rstd
    row_norm_fwd_kernel[(cdiv(N, block_rows),)](
        x, weight, gate, y, rstd, N, D, inv_n, eps,
        HAS_WEIGHT=weight is not None, HAS_GATE=gate is not None, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip
    return y, rstd


@row_norm_fwd.register_fake
def _(x, weight, gate, inv_n, eps, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape[0], dtype=torch.float32)


@kernel_op("deltanet::row_norm_bwd")
def row_norm_bwd(
    x: torch.Tensor, weight: torch.Tensor | None, gate: torch.Tensor | None, rstd: torch.Tensor,
    dy: torch.Tensor, inv_n: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dx like x, dweight like weight (empty [0] without one), dgate like gate (empty [0] without one)."""
    N, D = x.shape
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    dgate = torch.empty_like(gate) if gate is not None else x.new_empty(0)
    if N == 0:
        dweight = torch.zeros_like(weight) if weight is not None else x.new_empty(0)
        return dx, dweight, dgate
    block_d, block_rows, num_warps = _tiles(D)
    row_blocks = cdiv(N, block_rows)
    programs = min(row_blocks, 4 * multiprocessor_count(x.device))
    blocks_per_program = cdiv(row_blocks, programs)
    programs = cdiv(row_blocks, blocks_per_program)
    dw_partial = x.new_empty((programs, D) if weight is not None else (0,), dtype=torch.float32)
    row_norm_bwd_kernel[(programs,)](
        x, weight, gate, dy, rstd, dx, dgate, dw_partial, N, D, inv_n, blocks_per_program,
        HAS_WEIGHT=weight is not None, HAS_GATE=gate is not None, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip
    dweight = dw_partial.sum(0).to(weight.dtype) if weight is not None else x.new_empty(0)
    return dx, dweight, dgate


@row_norm_bwd.register_fake
def _(x, weight, gate, rstd, dy, inv_n):
    dweight = torch.empty_like(weight) if weight is not None else x.new_empty(0)
    dgate = torch.empty_like(gate) if gate is not None else x.new_empty(0)
    return torch.empty_like(x), dweight, dgate


def _setup_context(ctx, inputs, output):
    x, weight, gate, inv_n, eps, out_dtype = inputs
    ctx.save_for_backward(x, weight, gate, output[1])
    ctx.inv_n = inv_n


def _backward(ctx, dy, _drstd):
    x, weight, gate, rstd = ctx.saved_tensors
    dx, dweight, dgate = call_op(row_norm_bwd, x, weight, gate, rstd, dy, ctx.inv_n)
    return dx, dweight if weight is not None else None, dgate if gate is not None else None, None, None, None


row_norm_fwd.register_autograd(_backward, setup_context=_setup_context)
row_norm = eager_autograd(row_norm_fwd, _setup_context, _backward)


def row_norm_triton(
    x: torch.Tensor, weight: torch.Tensor | None, gate: torch.Tensor | None, inv_n: float, eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """x [..., D] -> y [..., D] in out_dtype (see the module docstring); gate has x's shape or is None."""
    check_triton_dtype(x, "x")
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    weight = None if weight is None else weight.contiguous()  # the kernels read it with stride 1
    gate2 = None if gate is None else gate.reshape(-1, shape[-1]).contiguous()
    y, _ = row_norm(x2, weight, gate2, inv_n, eps, out_dtype)
    return y.view(shape)
