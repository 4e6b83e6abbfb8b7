"""The causal depthwise short convolution (DeltaNet's q, k, v conv, width W <= 8), fused with SiLU.

Per channel c, with x_s = 0 for s before the token's (document) start:

    z_t[c] = sum_{i < W} w[c, W - 1 - i] * x_{t - i}[c]          y_t = act(z_t)

The backward, with dz = dy * act'(z) (SiLU: act'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))):

    dx_t[c]          = sum_{i < W} w[c, W - 1 - i] * dz_{t + i}[c]     (t + i < T, in t's document)
    dw[c, W - 1 - i] = sum_t dz_t[c] * x_{t - i}[c]                    (t - i in t's document)

Documents: pos_t, a token's position in its document (int32 [T], built by the caller from cu_seqlens;
for fixed-length batches pos_t = t). Token t - i is in t's document iff pos_t >= i, so every tap is
guarded by that one comparison.

One program per tile of BLOCK_T tokens x BLOCK_C channels of one batch row. The forward loads the tile W
times, shifted by 0 .. W - 1 tokens (the overlaps hit in cache). The backward takes two launches: the first
recomputes z from the same W taps and writes dz (float32); the second sums W shifted tiles of dz into dx and,
from the same tiles and one load of x, forms dw[c, W - 1 - i] = sum_s dz_{s + i} x_s as this tile's partial
sums in a float32 buffer [B * cdiv(T, BLOCK_T), C, W] that PyTorch adds (no atomics: deterministic).
qkv_features uses the second launch too. (A first version did it in one launch by recomputing dz for the
W - 1 shifted tiles, W^2 + 2W tile loads: 200 us for a [8, 2048, 1024] bf16 input on an H100, 6x its memory
time.)

Numerics: the weight is read in float32, every product and sum is in float32, dz is kept in float32, and y,
dx are rounded to x's dtype once at the end; dw stays float32 until the caller casts it to the weight's
dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.backends import check_triton_dtype
from deltanet.ops.triton.common import call_op, cdiv, eager_autograd, kernel_op, next_power_of_2

MAX_WIDTH = 8  # W is unrolled (tl.static_range); the public op accepts 1 <= W <= MAX_WIDTH
# Tiles, capped by the next power of two of T and C so small inputs do not run empty lanes. Swept on an H100
# (benchmarks/sweep_conv.py, 2026-11-27, [8, 2048, 1024] bf16): forward 32-40 us at 16-64 x 128, 4 warps.
# The backward's layout (dz, then dx with dw) is the one measured fastest for qkv_features (389 us against
# 419 us with dw in the dz launch, at 3072 channels); not timed separately for this op.
LAUNCH = {
    "fwd": {"block_t": 64, "block_c": 128, "num_warps": 4},
    "bwd": {"block_t": 32, "block_c": 128, "num_warps": 4},  # the dz launch
    "dx": {"block_t": 64, "block_c": 128, "num_warps": 4},  # dx and dw partial sums (as qkv_features')
}


@triton.jit
def conv_tile(x, weight, rows, pos, valid, offs_c, mask_c, C, W: tl.constexpr, BLOCK_T: tl.constexpr,
              BLOCK_C: tl.constexpr):
    """z [BLOCK_T, BLOCK_C] float32 at tokens `rows` (x already offset to the batch row); 0 where not valid.

    pos: the rows' positions in their documents. Tap i reads x_{row - i}, which exists only if
    pos >= i: the mask keeps both negative times and the previous document's tokens out.
    """
    z = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(W):
        w_i = tl.load(weight + offs_c * W + (W - 1 - i), mask=mask_c, other=0.0)
        tap = valid & (pos >= i)
        offsets = (rows - i).to(tl.int64)[:, None] * C + offs_c[None, :]  # 64-bit: T * C may pass 2^31
        x_i = tl.load(x + offsets, mask=tap[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        z += x_i * w_i[None, :]
    return z


@triton.jit
def token_tile(i_t, i_b, T, C, doc_position, BLOCK_T: tl.constexpr, IS_VARLEN: tl.constexpr):
    """A program's BLOCK_T tokens of batch row i_b: (token indices, their mask, their positions in their
    documents, the row's element offset in a [B, T, C] tensor as int64)."""
    offs_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T  # the last tile is partial
    if IS_VARLEN:
        pos = tl.load(doc_position + offs_t, mask=mask_t, other=0)
    else:
        pos = offs_t
    return offs_t, mask_t, pos, i_b.to(tl.int64) * T * C


@triton.jit
def short_conv_fwd_kernel(
    x, weight, doc_position, y,
    T, C, W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    tl.static_assert(W <= 8)  # MAX_WIDTH
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t, mask_t, pos, base = token_tile(i_t, i_b, T, C, doc_position, BLOCK_T, IS_VARLEN)
    offs_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C  # the last tile in C is partial
    z = conv_tile(x + base, weight, offs_t, pos, mask_t, offs_c, mask_c, C, W, BLOCK_T, BLOCK_C)
    if SILU:
        z = z * tl.sigmoid(z)
    offsets = offs_t.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(y + base + offsets, z.to(y.dtype.element_ty), mask=mask_t[:, None] & mask_c[None, :])


@triton.jit
def short_conv_dz_kernel(
    x, weight, doc_position, dy, dz,
    T, C, W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    """dz = dy * act'(z) (z recomputed from the W taps of x) into float32 dz."""
    tl.static_assert(W <= 8)  # MAX_WIDTH
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t, mask_t, pos, base = token_tile(i_t, i_b, T, C, doc_position, BLOCK_T, IS_VARLEN)
    offs_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask = mask_t[:, None] & mask_c[None, :]
    offsets = offs_t.to(tl.int64)[:, None] * C + offs_c[None, :]
    b_dz = tl.load(dy + base + offsets, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        z = conv_tile(x + base, weight, offs_t, pos, mask_t, offs_c, mask_c, C, W, BLOCK_T, BLOCK_C)
        sig = tl.sigmoid(z)
        b_dz = b_dz * sig * (1 + z * (1 - sig))
    tl.store(dz + base + offsets, b_dz, mask=mask)


@triton.jit
def short_conv_dx_dw_kernel(
    dz, x, weight, doc_position, dx, dweight_partial,
    T, C, X_STRIDE: tl.constexpr, W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """dx_s = sum_i w[W - 1 - i] dz_{s + i}, and this tile's partial sums of
    dw[W - 1 - i] = sum_s dz_{s + i} x_s (the same shifted dz tiles, one load of x): both over the outputs
    s + i that read x_s (in range, in s's document: their own position >= i).
    dz is [B, T, C]; x and dx are [B, T, X_STRIDE] with the conv's C channels first (X_STRIDE >= C; a
    compile-time constant so that Triton sees the rows' alignment, see qkv_features_fwd_kernel)."""
    tl.static_assert(W <= 8)  # MAX_WIDTH
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_t, mask_c = offs_t < T, offs_c < C
    base = i_b.to(tl.int64) * T * C
    x_base = i_b.to(tl.int64) * T * X_STRIDE
    x_offsets = offs_t.to(tl.int64)[:, None] * X_STRIDE + offs_c[None, :]
    b_x = tl.load(x + x_base + x_offsets, mask=mask_t[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    p_dw = dweight_partial + (i_b.to(tl.int64) * tl.cdiv(T, BLOCK_T) + i_t) * C * W + offs_c * W
    b_dx = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(W):
        rows = offs_t + i
        valid = mask_t & (rows < T)
        if IS_VARLEN:
            valid = valid & (tl.load(doc_position + rows, mask=valid, other=0) >= i)
        w_i = tl.load(weight + offs_c * W + (W - 1 - i), mask=mask_c, other=0.0)
        dz_offsets = rows.to(tl.int64)[:, None] * C + offs_c[None, :]
        dz_mask = valid[:, None] & mask_c[None, :]
        dz_i = tl.load(dz + base + dz_offsets, mask=dz_mask, other=0.0).to(tl.float32)
        b_dx += dz_i * w_i[None, :]
        tl.store(p_dw + (W - 1 - i), tl.sum(dz_i * b_x, axis=0), mask=mask_c)
    tl.store(dx + x_base + x_offsets, b_dx.to(dx.dtype.element_ty), mask=mask_t[:, None] & mask_c[None, :])


def short_conv_dx_dw(dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     doc_position: torch.Tensor | None, launch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """dz [B, T, C] (the gradient before the conv's taps; float32, or x's dtype to move half the bytes), x
    [B, T, C + E] (the conv's input in its first C channels; E = 0 for the plain conv) and weight [C, W] as in
    the forward -> dx [B, T, C + E] with its first C channels written (the caller fills the rest) and dweight
    [C, W] float32 (partial sums per tile, added by PyTorch: deterministic, no atomics).
    launch: {"block_t", "block_c", "num_warps"}."""
    B, T, C = dz.shape
    W = weight.shape[1]
    block_t = min(launch["block_t"], max(16, next_power_of_2(T)))
    block_c = min(launch["block_c"], max(16, next_power_of_2(C)))
    dx = torch.empty_like(x)
    dweight_partial = x.new_empty(B * cdiv(T, block_t), C, W, dtype=torch.float32)  # every entry is written
    short_conv_dx_dw_kernel[(cdiv(T, block_t), cdiv(C, block_c), B)](
        dz, x, weight, doc_position, dx, dweight_partial, T, C, x.shape[2], W, block_t, block_c,
        IS_VARLEN=doc_position is not None, num_warps=launch["num_warps"],
    )
    return dx, dweight_partial.sum(0)


def _blocks(name: str, T: int, C: int) -> tuple[int, int, int]:
    launch = LAUNCH[name]
    block_t = min(launch["block_t"], max(16, next_power_of_2(T)))
    block_c = min(launch["block_c"], max(16, next_power_of_2(C)))
    return block_t, block_c, launch["num_warps"]


def short_conv_fwd(x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None,
                   silu: bool) -> torch.Tensor:
    """x [B, T, C] and weight [C, W] float32, both contiguous; doc_position int32 [T] or None -> y like x."""
    B, T, C = x.shape
    W = weight.shape[1]
    y = torch.empty_like(x)
    block_t, block_c, num_warps = _blocks("fwd", T, C)
    grid = (cdiv(T, block_t), cdiv(C, block_c), B)
    short_conv_fwd_kernel[grid](
        x, weight, doc_position, y, T, C, W, block_t, block_c,
        IS_VARLEN=doc_position is not None, SILU=silu, num_warps=num_warps,
    )
    return y


def short_conv_bwd(x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None, silu: bool,
                   dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's arguments and dy [B, T, C] contiguous -> dx like x, dweight [C, W] float32."""
    B, T, C = x.shape
    W = weight.shape[1]
    block_t, block_c, num_warps = _blocks("bwd", T, C)
    dz = torch.empty(B, T, C, device=x.device, dtype=torch.float32)  # float32: one rounding less in dx
    short_conv_dz_kernel[(cdiv(T, block_t), cdiv(C, block_c), B)](
        x, weight, doc_position, dy, dz, T, C, W, block_t, block_c,
        IS_VARLEN=doc_position is not None, SILU=silu, num_warps=num_warps,
    )
    return short_conv_dx_dw(dz, x, weight, doc_position, LAUNCH["dx"])


# Registered as PyTorch custom ops (a fake implementation for shapes, an autograd formula) so that the op
# runs inside torch.compile without a graph break. The forward saves x, not y: SiLU's z is recomputed.


@kernel_op("deltanet::causal_conv1d_fwd")
def causal_conv1d_fwd(
    x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None, silu: bool
) -> torch.Tensor:
    """-> y [B, T, C] like x."""
    return short_conv_fwd(x, weight, doc_position, silu)


@causal_conv1d_fwd.register_fake
def _(x, weight, doc_position, silu):
    return torch.empty_like(x)


@kernel_op("deltanet::causal_conv1d_bwd")
def causal_conv1d_bwd(
    x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None, silu: bool, dy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> dx [B, T, C] like x, dweight [C, W] float32."""
    return short_conv_bwd(x, weight, doc_position, silu, dy)


@causal_conv1d_bwd.register_fake
def _(x, weight, doc_position, silu, dy):
    return torch.empty_like(x), weight.new_empty(weight.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, doc_position, silu = inputs
    ctx.save_for_backward(x, weight, doc_position)
    ctx.silu = silu


def _backward(ctx, dy):
    x, weight, doc_position = ctx.saved_tensors
    dx, dweight = call_op(causal_conv1d_bwd, x, weight, doc_position, ctx.silu, dy.contiguous())
    return dx, dweight, None, None


causal_conv1d_fwd.register_autograd(_backward, setup_context=_setup_context)
causal_conv1d = eager_autograd(causal_conv1d_fwd, _setup_context, _backward)


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None,
                         activation: str | None) -> torch.Tensor:
    """Validated arguments in, y out; see `deltanet.ops.causal_conv1d`."""
    check_triton_dtype(x, "x")
    # The weight in float32 (autograd casts its gradient back to the weight's dtype).
    weight = weight.to(torch.float32).contiguous()
    return causal_conv1d(x.contiguous(), weight, doc_position, activation == "silu")
