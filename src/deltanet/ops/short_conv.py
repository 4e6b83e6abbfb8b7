"""The causal depthwise short convolution (DeltaNet's width-4 conv on q, k and v), with optional SiLU.

    y_t[c] = act( sum_{i < W} weight[c, W - 1 - i] * x_{t - i}[c] ),   x_s = 0 before the document start

weight[c, W - 1] multiplies the current token: F.conv1d's convention on the input left-padded with W - 1
zeros, with weight [C, 1, W] and groups=C. `causal_conv1d_torch` is the PyTorch form (and the
specification the kernels are tested against, with an F.conv1d reference in tests/test_short_conv.py);
the Triton kernels are in ops/triton/short_conv.py. Layers (layers/conv.py) sit on top of this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltanet.ops.backends import resolve_backend
from deltanet.ops.host_offsets import memoized
from deltanet.ops.validation import FLOAT_DTYPES, check_cu_seqlens, shape_str

MAX_WIDTH = 8  # the Triton kernels unroll the W taps
ACTIVATIONS = (None, "silu")


def check_short_conv_inputs(
    x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None, activation: str | None,
    x_name: str = "x",
) -> None:
    """Validate the arguments of `causal_conv1d`; errors name the argument and the expected shape or value.

    x_name: the input's name in the caller's signature. Reads cu_seqlens on the host (one sync) to check it.
    """
    for name, t in ((x_name, x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float64, float32, bfloat16 or float16, got {t.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{x_name} must have shape [B, T, C] (3 dims), got {shape_str(x)}")
    B, T, C = x.shape
    if B == 0 or T == 0 or C == 0:
        raise ValueError(f"{x_name} must have non-empty B, T and C, got {shape_str(x)}")
    if weight.dim() != 2 or weight.shape[0] != C:
        raise ValueError(f"weight must have shape [C, W] = [{C}, W], got {shape_str(weight)}"
                         + (" (squeeze the F.conv1d layout [C, 1, W])" if weight.dim() == 3 else ""))
    if not 1 <= weight.shape[1] <= MAX_WIDTH:
        raise ValueError(f"weight width W must be in [1, {MAX_WIDTH}], got weight {shape_str(weight)}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but {x_name} is on {x.device}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, B, T, x.device, x_name)


def document_positions(cu_seqlens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Each packed token's position within its document, int32 [T]; built on the device, no sync.

    A token's document starts at the largest cu_seqlens[n] <= t: scatter each start at its own index
    (empty documents repeat a start, with the same value) and take the running maximum.
    """
    return memoized(cu_seqlens, ("document_positions", seq_len),
                    lambda: _build_document_positions(cu_seqlens, seq_len))


def _build_document_positions(cu_seqlens: torch.Tensor, seq_len: int) -> torch.Tensor:
    starts = cu_seqlens[:-1].long()
    # seq_len + 1 slots: empty documents at the end start at T.
    start_at = torch.zeros(seq_len + 1, dtype=torch.long, device=cu_seqlens.device)
    start_at.index_put_((starts,), starts)
    token = torch.arange(seq_len, device=cu_seqlens.device)
    return (token - start_at[:seq_len].cummax(0).values).to(torch.int32)


def causal_conv1d_torch(
    x: torch.Tensor, weight: torch.Tensor, doc_position: torch.Tensor | None, activation: str | None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The short conv as a sum of W shifted products; autograd gives the backward.

    x [B, T, C], weight [C, W], doc_position int32 [T] (packed documents, B = 1) or None. Computes in
    float32 (float64 for float64 x) and returns y [B, T, C] in out_dtype (default: x's dtype).
    """
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, wf = x.to(compute_dtype).contiguous(), weight.to(compute_dtype)  # contiguous: so is y
    T, W = x.shape[1], weight.shape[1]
    z = xf * wf[:, W - 1]
    for i in range(1, min(W, T)):
        shifted = F.pad(xf[:, : T - i], (0, 0, i, 0))  # x_{t - i}, zero for t < i
        if doc_position is not None:
            # x_{t - i} belongs to the previous document when t is fewer than i tokens into its own.
            shifted = shifted * (doc_position >= i).to(compute_dtype)[None, :, None]
        z = z + shifted * wf[:, W - 1 - i]
    if activation == "silu":
        z = F.silu(z)
    return z.to(x.dtype if out_dtype is None else out_dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal depthwise convolution over time, each channel with its own W taps, then optionally SiLU.

        y_t[c] = act( sum_{i=0}^{W-1} weight[c, W - 1 - i] * x_{t - i}[c] )

    with x_{t - i} = 0 before the start of the sequence (or of t's document). No bias.

    Args:
        x: inputs [B, T, C]; float64, float32, bfloat16 or float16; any strides (made contiguous inside).
        weight: taps [C, W], 1 <= W <= 8, any float dtype; weight[:, W - 1] multiplies the current token
            (the F.conv1d weight [C, 1, W] squeezed). Used in float32 (float64 for float64 x).
        cu_seqlens: int32/int64 [N + 1] cumulative lengths of documents packed along T (B must be 1;
            starts at 0, ends at T, non-decreasing). The conv restarts at every document start: no input
            of one document reaches another. None: each batch row is one sequence.
        activation: None or "silu".
        backend: None picks the fastest for x's device and dtype; "torch" forces PyTorch (any device, any
            dtype); "triton" the GPU kernels (float32, bfloat16, float16).

    Returns:
        y [B, T, C] in x's dtype, contiguous. Both backends accumulate in float32 (the PyTorch one in
        float64 for float64 x) and round once; gradients flow to x and weight, the weight's gradient is
        accumulated in float32 and returned in weight's dtype.
    """
    check_short_conv_inputs(x, weight, cu_seqlens, activation)
    backend = resolve_backend(backend, x)
    doc_position = None if cu_seqlens is None else document_positions(cu_seqlens, x.shape[1])
    if backend == "triton":
        from deltanet.ops.triton.short_conv import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, doc_position, activation)
    return causal_conv1d_torch(x, weight, doc_position, activation)
