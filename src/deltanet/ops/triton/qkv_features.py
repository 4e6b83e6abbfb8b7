"""DeltaNet's q, k, v features in one pass: the short conv with SiLU over the fused q|k|v projection, then the
L2 norm of each q and k head (see deltanet.ops.qkv_features for the definition).

One program per tile of BLOCK_T tokens x one head (D channels) of one batch row; program axis 1 runs over
the 3H heads of q|k|v, so a program's tile is a whole head and the L2 norm is a row sum inside the tile.
The three feature outputs are separate contiguous [B, T, H, D] tensors (the delta-rule op reads them as they
are); a program picks its output by a branch on which third of the channels it covers. x's rows may carry E
more channels after the 3HD (passthrough: DeltaNet's beta logits from the same matmul): the kernels read and
write x and dx with that row stride, and the host copies those channels out and their gradient in.

Backward, with g the gradient of a normalised head y * r (r = (|y|^2 + eps)^-1/2):
    dy = r (g - yhat (yhat . g)),   yhat = y r,   then dz = dy * silu'(z) as in the plain conv.
The first launch recomputes z, y and r from x and writes dz (in x's dtype by default, LAUNCH) over all 3HD
channels; the second sums the W shifted dz tiles into dx, and from the same tiles and one load of x forms
this tile's partial sums of dw[W - 1 - i] = sum_s dz_{s + i} x_s (PyTorch adds the partials: deterministic,
no atomics).

This replaces, per DeltaNet layer, three conv launches forward and six backward plus two L2-norm launches
each way (a profile of the 340M model's compiled step on an H100, 2026-11-27: those launches took ~19 ms of a
117 ms step, and their Python launch overhead left the step bound by the host).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltanet.ops.backends import check_triton_dtype
from deltanet.ops.triton.common import call_op, cdiv, eager_autograd, kernel_op, next_power_of_2
from deltanet.ops.triton.short_conv import conv_tile, short_conv_dx_dw, token_tile

# Tokens per program; a program covers one head (BLOCK_D = next power of two of D channels); dx/dw tiles
# over all 3HD channels. From benchmarks/sweep_qkv_features.py on an H100 (2026-11-27, [8, 2048, 3 x 8 x 128]
# bf16): forward 88 us at 32 tokens / 4 warps (2.3 TB/s; 91-415 us for the other settings); backward 389 us
# at 16 / 4 with 64 x 128 dx tiles and dz in float32. Measured and dropped: dw summed in the dz launch (the
# plain conv's layout, 419 us at best); one fused launch recomputing dz at the W shifts (749 us at best);
# dx/dw programs walking several tiles and reducing dw once (381 us at best: the per-tile reductions were not
# the cost); one launch keeping dz in registers, shifted by tl.gather (450 us at best, 32 tokens / 4 warps,
# vs 336 us for the two launches with dz in bf16 at 16 / 4; one 340M layer's forward+backward 3.909-4.461 ms
# vs 3.914, benchmarks/layer_variants.py; the 340M model with CUDA graphs at 8 x 2048 143.7K vs 147.2-149.2K
# tokens/s).
# dz_dtype: "float32" (one rounding less in dx and dw) or "input" (x's dtype: the backward moves 12 instead of
# 16 bytes per channel and token in bf16): 390 -> 344 us at 16 tokens / 4 warps (the best setting of each,
# 339.5 us at 32 / 4), bf16 error against float64 2.35e-3 vs 1.67e-3 for PyTorch's path (within the 2x
# rule of benchmarks/check_model_ops.py); float32 inputs are unaffected (H100, 2026-11-27).
LAUNCH = {
    "fwd": {"block_t": 32, "num_warps": 4},
    "bwd": {"block_t": 16, "num_warps": 4, "dz_dtype": "input"},
    "dx": {"block_t": 64, "block_c": 128, "num_warps": 4},
}


@triton.jit
def head_output_offsets(i_b, offs_t, i_head, offs_d, T, H, D):
    """Element offsets of a [BLOCK_T, BLOCK_D] tile of head i_head (in [0, H)) in a [B, T, H, D] tensor."""
    row = (i_b.to(tl.int64) * T + offs_t.to(tl.int64)) * H + i_head
    return row[:, None] * D + offs_d[None, :]


@triton.jit
def qkv_features_fwd_kernel(
    x, weight, doc_position, q, k, v,
    T, H, D, X_STRIDE: tl.constexpr, eps,
    W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr, NORMALIZE_QK: tl.constexpr,
):
    """x [B, T, X_STRIDE]: the 3HD conv channels first (X_STRIDE >= 3HD: passed-through channels follow).
    X_STRIDE is a compile-time constant: as a plain int argument, a stride that is not a multiple of 16 (3080
    for the 340M model with beta's 8 channels) would hide the rows' 16-byte alignment from Triton, and every
    access to x would go element by element (seen in the sm_90a PTX)."""
    i_t, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    which = i_h // H  # 0: q, 1: k, 2: v
    offs_t, mask_t, pos, x_base = token_tile(i_t, i_b, T, X_STRIDE, doc_position, BLOCK_T, IS_VARLEN)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = i_h * D + offs_d
    mask_d = offs_d < D
    z = conv_tile(x + x_base, weight, offs_t, pos, mask_t, offs_c, mask_d, X_STRIDE, W, BLOCK_T, BLOCK_D)
    y = z * tl.sigmoid(z)  # 0 in masked lanes (z = 0 there), so the row sums below are exact
    if NORMALIZE_QK:
        if which < 2:
            y = y * tl.rsqrt(tl.sum(y * y, axis=1) + eps)[:, None]
    offsets = head_output_offsets(i_b, offs_t, i_h % H, offs_d, T, H, D)
    mask = mask_t[:, None] & mask_d[None, :]
    if which == 0:
        tl.store(q + offsets, y.to(q.dtype.element_ty), mask=mask)
    elif which == 1:
        tl.store(k + offsets, y.to(k.dtype.element_ty), mask=mask)
    else:
        tl.store(v + offsets, y.to(v.dtype.element_ty), mask=mask)


@triton.jit
def head_dz(
    x, weight, dq, dk, dv, i_b, i_h, rows, pos, valid, T, H, D, X_STRIDE, eps,
    W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, NORMALIZE_QK: tl.constexpr,
):
    """dz [BLOCK_T, BLOCK_D] float32 of head i_h (in [0, 3H)) of batch row i_b at tokens `rows` (x is
    [B, T, X_STRIDE]): the output gradient through the L2 norm (q, k heads) and SiLU, with z recomputed from
    the W taps; 0 where not valid. -> (dz, the head's channels, their mask).
    """
    which = i_h // H  # 0: q, 1: k, 2: v
    x_base = i_b.to(tl.int64) * T * X_STRIDE
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask = valid[:, None] & mask_d[None, :]
    out_offsets = head_output_offsets(i_b, rows, i_h % H, offs_d, T, H, D)
    if which == 0:
        g = tl.load(dq + out_offsets, mask=mask, other=0.0).to(tl.float32)
    elif which == 1:
        g = tl.load(dk + out_offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        g = tl.load(dv + out_offsets, mask=mask, other=0.0).to(tl.float32)
    offs_c = i_h * D + offs_d
    z = conv_tile(x + x_base, weight, rows, pos, valid, offs_c, mask_d, X_STRIDE, W, BLOCK_T, BLOCK_D)
    sig = tl.sigmoid(z)
    if NORMALIZE_QK:
        if which < 2:
            y = z * sig
            r = tl.rsqrt(tl.sum(y * y, axis=1) + eps)
            y_hat = y * r[:, None]
            g = r[:, None] * (g - y_hat * tl.sum(y_hat * g, axis=1)[:, None])
    return g * sig * (1 + z * (1 - sig)), offs_c, mask_d


@triton.jit
def qkv_features_dz_kernel(
    x, weight, doc_position, dq, dk, dv, dz,
    T, H, D, X_STRIDE: tl.constexpr, eps,
    W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr, NORMALIZE_QK: tl.constexpr,
):
    """dz [B, T, 3HD] (float32 or x's dtype): the output gradient through the norms and SiLU."""
    i_t, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    C = 3 * H * D
    offs_t, mask_t, pos, base = token_tile(i_t, i_b, T, C, doc_position, BLOCK_T, IS_VARLEN)
    b_dz, offs_c, mask_d = head_dz(x, weight, dq, dk, dv, i_b, i_h, offs_t, pos, mask_t, T, H, D, X_STRIDE,
                                   eps, W, BLOCK_T, BLOCK_D, NORMALIZE_QK)
    offsets = offs_t.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(dz + base + offsets, b_dz.to(dz.dtype.element_ty), mask=mask_t[:, None] & mask_d[None, :])


def qkv_features_fwd_launch(x, weight, doc_position, num_heads: int, normalize_qk: bool, eps: float):
    """x [B, T, 3HD + E] and weight [3HD, W] float32, both contiguous -> q, k, v [B, T, H, D] in x's dtype
    (the last E channels of x are not read)."""
    B, T, X_STRIDE = x.shape
    C, W = weight.shape
    H = num_heads
    D = C // (3 * H)
    q, k, v = (x.new_empty(B, T, H, D) for _ in range(3))
    block_t = min(LAUNCH["fwd"]["block_t"], max(16, next_power_of_2(T)))
    grid = (cdiv(T, block_t), 3 * H, B)
    qkv_features_fwd_kernel[grid](
        x, weight, doc_position, q, k, v, T, H, D, X_STRIDE, eps, W, block_t, max(16, next_power_of_2(D)),
        IS_VARLEN=doc_position is not None, NORMALIZE_QK=normalize_qk, num_warps=LAUNCH["fwd"]["num_warps"],
    )
    return q, k, v


def qkv_features_bwd_launch(x, weight, doc_position, num_heads: int, normalize_qk: bool, eps: float,
                            dq, dk, dv):
    """The forward's arguments and contiguous dq, dk, dv [B, T, H, D] -> dx like x (its first 3HD channels
    written; the caller fills the passed-through ones), dweight [3HD, W] float32."""
    B, T, X_STRIDE = x.shape
    C, W = weight.shape
    H = num_heads
    D = C // (3 * H)
    is_varlen = doc_position is not None
    block_t = min(LAUNCH["bwd"]["block_t"], max(16, next_power_of_2(T)))
    dz_dtype = {"float32": torch.float32, "input": x.dtype}.get(LAUNCH["bwd"]["dz_dtype"])
    if dz_dtype is None:
        raise ValueError(f'LAUNCH["bwd"]["dz_dtype"] must be "float32" or "input", got '
                         f'{LAUNCH["bwd"]["dz_dtype"]!r}')
    dz = torch.empty(B, T, C, device=x.device, dtype=dz_dtype)
    qkv_features_dz_kernel[(cdiv(T, block_t), 3 * H, B)](
        x, weight, doc_position, dq, dk, dv, dz, T, H, D, X_STRIDE, eps, W, block_t,
        max(16, next_power_of_2(D)), IS_VARLEN=is_varlen, NORMALIZE_QK=normalize_qk,
        num_warps=LAUNCH["bwd"]["num_warps"],
    )
    return short_conv_dx_dw(dz, x, weight, doc_position, LAUNCH["dx"])


# Custom ops (a fake implementation for shapes, an autograd formula): no graph break under torch.compile.
# The forward saves x, not the outputs: z, y and the norms are recomputed in the backward. x may carry E
# channels after the 3HD conv channels (E = x.shape[-1] - weight.shape[0]): they are returned as they are
# (a copy, [B, T, E]) and their gradient is written into dx, so that one matmul can produce q|k|v and other
# projections without a split in autograd (whose backward would copy the whole gradient).


@kernel_op("deltanet::qkv_features_fwd")
def qkv_features_fwd(
    x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None, num_heads: int,
    normalize_qk: bool, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> q, k, v [B, T, H, D] in x's dtype, and the passed-through channels [B, T, E]."""
    q, k, v = qkv_features_fwd_launch(x, weight, doc_position, num_heads, normalize_qk, eps)
    return q, k, v, x[..., weight.shape[0]:].clone()


@qkv_features_fwd.register_fake
def _(x, weight, doc_position, num_heads, normalize_qk, eps):
    B, T, _ = x.shape
    C = weight.shape[0]
    shape = (B, T, num_heads, C // (3 * num_heads))
    return x.new_empty(shape), x.new_empty(shape), x.new_empty(shape), x.new_empty(B, T, x.shape[2] - C)


@kernel_op("deltanet::qkv_features_bwd")
def qkv_features_bwd(
    x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None, num_heads: int,
    normalize_qk: bool, eps: float, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    d_passthrough: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> dx [B, T, 3HD + E] like x (its last E channels: d_passthrough [B, T, E]), dweight [3HD, W]
    float32."""
    dx, dweight = qkv_features_bwd_launch(x, weight, doc_position, num_heads, normalize_qk, eps, dq, dk, dv)
    if dx.shape[2] > weight.shape[0]:
        dx[..., weight.shape[0]:].copy_(d_passthrough)
    return dx, dweight


@qkv_features_bwd.register_fake
def _(x, weight, doc_position, num_heads, normalize_qk, eps, dq, dk, dv, d_passthrough):
    return torch.empty_like(x), weight.new_empty(weight.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, doc_position, num_heads, normalize_qk, eps = inputs
    ctx.save_for_backward(x, weight, doc_position)
    ctx.num_heads, ctx.normalize_qk, ctx.eps = num_heads, normalize_qk, eps
    ctx.output_shape = output[0].shape


def _backward(ctx, dq, dk, dv, d_passthrough):
    x, weight, doc_position = ctx.saved_tensors
    # An output that took no part in the loss has no gradient: zeros of its shape.
    grads = [x.new_zeros(ctx.output_shape) if g is None else g.contiguous() for g in (dq, dk, dv)]
    if d_passthrough is None:
        d_passthrough = x.new_zeros(*x.shape[:2], x.shape[2] - weight.shape[0])
    dx, dweight = call_op(qkv_features_bwd, x, weight, doc_position, ctx.num_heads, ctx.normalize_qk, ctx.eps,
                          *grads, d_passthrough)
    return dx, dweight, None, None, None, None


qkv_features_fwd.register_autograd(_backward, setup_context=_setup_context)
qkv_features_autograd = eager_autograd(qkv_features_fwd, _setup_context, _backward)


def qkv_features_triton(qkv: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None,
                        num_heads: int, normalize_qk: bool, eps: float):
    """Validated arguments in, (q, k, v, passed-through channels [B, T, E]) out; see
    `deltanet.ops.qkv_features`."""
    check_triton_dtype(qkv, "qkv")
    weight = weight.to(torch.float32).contiguous()  # autograd casts its gradient back to weight's dtype
    return qkv_features_autograd(qkv.contiguous(), weight, doc_position, num_heads, normalize_qk, float(eps))
