"""causal_conv1d, both backends, against an independent float64 reference built on F.conv1d.

The Triton kernels run on the CPU under TRITON_INTERPRET=1 (see conftest). Sizes are awkward on purpose:
T in {1, 37, 130} (BLOCK_T is 64), C in {48, 200} (BLOCK_C is 64 or 128), and packed documents of
lengths 0, 1, 2 and 3 (shorter than W = 4) next to ones that cross a tile boundary. Uninitialised
allocations are filled with NaN, so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_named_close, rel_err

from deltanet.ops import causal_conv1d
from deltanet.ops.short_conv import causal_conv1d_torch, document_positions

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]

# float32: an output or dx is a sum of at most W = 4 float32 products (then SiLU), dweight a sum of at most
# B * T = 260; unit roundoff 6e-8, so a few e-7 is expected (observed <= 3e-7 for both backends). 1e-5
# leaves room for any summation order, while a wrong tap or a leak across a document start is O(1).
FP32_BOUND = 1e-5
# float16 (flash-attention's method): the kernel's error against the float64 reference may be at
# most 2x (output) and 3x (gradients) the error of the PyTorch path run in the same low precision.
LOW_PRECISION_FACTORS = (2, 3, 3)
NAMES = ("y", "dx", "dweight")


pytestmark = pytest.mark.usefixtures("nan_filled_allocations")  # conftest: unwritten elements show up


def conv_reference(x, weight, cu_seqlens=None, activation=None):
    """float64 F.conv1d on each document (each batch row without cu_seqlens), left-padded with W - 1 zeros."""
    x, weight = x.double(), weight.double()
    C, W = weight.shape
    bounds = [0, x.shape[1]] if cu_seqlens is None else cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if start == end:
            continue  # an empty document has no outputs (and F.conv1d refuses an input shorter than W)
        x_bct = F.pad(x[:, start:end].transpose(1, 2), (W - 1, 0))
        outputs.append(F.conv1d(x_bct, weight[:, None, :], groups=C).transpose(1, 2))
    y = torch.cat(outputs, dim=1)
    return F.silu(y) if activation == "silu" else y


def make_inputs(B, T, C, W, dtype=torch.float32, weight_dtype=torch.float32, seed=0):
    """x [B, T, C] and weight [C, W] drawn in float64, then cast: every dtype sees the same values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    weight = torch.randn(C, W, generator=g, dtype=torch.float64) * W**-0.5
    return x.to(dtype), weight.to(weight_dtype)


def outputs_and_grads(x, weight, seed, backend, **kwargs):
    """y, and the gradients of <y, dy> for a random dy with respect to x and weight.

    backend="reference": the float64 F.conv1d reference on the same (already rounded) values."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight)]
    if backend == "reference":
        leaves = [t.detach().double().requires_grad_() for t in leaves]
        y = conv_reference(*leaves, **kwargs)
    else:
        y = causal_conv1d(*leaves, backend=backend, **kwargs)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return [y, *torch.autograd.grad((y.double() * dy).sum(), leaves)]


def assert_close(actual, expected, bound):
    assert_named_close(NAMES, actual, expected, bound)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("W", [1, 2, 4])
@pytest.mark.parametrize("B,T,C", [(2, 1, 48), (1, 37, 200), (2, 130, 48)])
def test_float32_matches_float64_conv1d(backend, activation, W, B, T, C):
    x, weight = make_inputs(B, T, C, W, seed=T + C + W)
    ref = outputs_and_grads(x, weight, seed=1, backend="reference", activation=activation)
    out = outputs_and_grads(x, weight, seed=1, backend=backend, activation=activation)
    assert out[0].dtype == torch.float32 and out[0].is_contiguous() and out[0].shape == (B, T, C)
    assert_close(out, ref, FP32_BOUND)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_packed_documents_restart_the_conv(backend, activation):
    lengths = [1, 3, 0, 70, 2, 54]  # length 1, shorter than W, empty, across the tile boundary at 64
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    x, weight = make_inputs(1, sum(lengths), 48, 4, seed=3)
    ref = outputs_and_grads(x, weight, seed=2, backend="reference", cu_seqlens=cu, activation=activation)
    out = outputs_and_grads(x, weight, seed=2, backend=backend, cu_seqlens=cu.long(), activation=activation)
    assert_close(out, ref, FP32_BOUND)


def test_document_positions():
    cu = torch.tensor([0, 1, 1, 4, 6, 6])  # empty documents inside and at the end
    assert document_positions(cu, 6).tolist() == [0, 0, 1, 2, 0, 1]


@needs_triton
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("cu_seqlens", [None, [0, 2, 40, 41, 70]])
def test_float16_error_within_that_of_the_torch_path(activation, cu_seqlens):
    """float16 only: Triton 3.6's interpreter converts float32 to bfloat16 by truncation (measured: half of
    the elements differ from torch's round-to-nearest), so a bfloat16 kernel would carry up to twice the
    rounding error here that it carries on a GPU; its float16 conversion rounds to nearest."""
    dtype = torch.float16
    B = 2 if cu_seqlens is None else 1
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens)
    x, weight = make_inputs(B, 70, 72, 4, dtype=dtype, seed=5)  # weight float32, as a trained parameter
    kwargs = {"cu_seqlens": cu, "activation": activation}
    ref = outputs_and_grads(x, weight, seed=4, backend="reference", **kwargs)
    torch_path = outputs_and_grads(x, weight, seed=4, backend="torch", **kwargs)
    kernel = outputs_and_grads(x, weight, seed=4, backend="triton", **kwargs)
    assert kernel[0].dtype == dtype and kernel[1].dtype == dtype and kernel[2].dtype == torch.float32
    for name, a, p, e, factor in zip(NAMES, kernel, torch_path, ref, LOW_PRECISION_FACTORS):
        assert torch.isfinite(a).all(), f"{name} has NaN/Inf"
        err, torch_err = rel_err(a, e), rel_err(p, e)
        assert err <= factor * torch_err, f"{name}: kernel {err:.2e} > {factor} x torch path {torch_err:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_x_and_weight_dtype(backend):
    """x as a slice of a wider tensor and as the transpose of [B, C, T]; a bfloat16 weight gets a bfloat16
    gradient (accumulated in float32, so it matches the float32 weight's gradient rounded)."""
    x, weight = make_inputs(2, 37, 48, 4, seed=6)
    wide = torch.cat([x, torch.randn(2, 37, 16)], dim=-1)
    x_bct = x.transpose(1, 2).contiguous()
    ref = outputs_and_grads(x, weight, seed=5, backend="reference", activation="silu")
    for strided in (wide[..., :48], x_bct.transpose(1, 2)):
        assert not strided.is_contiguous()
        out = outputs_and_grads(strided, weight, seed=5, backend=backend, activation="silu")
        assert out[0].is_contiguous()
        assert_close(out, ref, FP32_BOUND)
    out = outputs_and_grads(x, weight.bfloat16(), seed=5, backend=backend, activation="silu")
    assert out[2].dtype == torch.bfloat16
    expected = conv_reference(x, weight.bfloat16(), activation="silu")
    assert rel_err(out[0], expected) <= FP32_BOUND  # the bfloat16 taps themselves, used in float32
    assert rel_err(out[2], ref[2]) <= 2**-8  # bfloat16's unit roundoff (plus the taps' own rounding)


def test_torch_path_gradcheck_float64():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 1, 3, 9])
    for cu_seqlens in (None, cu):
        assert torch.autograd.gradcheck(
            lambda a, b: causal_conv1d(a, b, cu_seqlens=cu_seqlens, activation="silu", backend="torch"),
            (x, weight),
        )
    # float64 stays float64 through the PyTorch path: equal to the reference up to float64 roundoff.
    y = causal_conv1d_torch(x, weight, document_positions(cu, 9), "silu")
    assert y.dtype == torch.float64 and rel_err(y, conv_reference(x, weight, cu, "silu")) < 1e-14


@needs_triton
def test_triton_backward_is_deterministic():
    x, weight = make_inputs(1, 130, 48, 4, seed=8)
    first = outputs_and_grads(x, weight, seed=6, backend="triton", activation="silu")
    second = outputs_and_grads(x, weight, seed=6, backend="triton", activation="silu")
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"weight": torch.zeros(47, 4)}, ValueError, r"weight must have shape \[C, W\] = \[48, W\]"),
    ({"weight": torch.zeros(48, 1, 4)}, ValueError, r"weight must have shape \[C, W\].*\[C, 1, W\]"),
    ({"weight": torch.zeros(48, 9)}, ValueError, r"weight width W must be in \[1, 8\]"),
    ({"x": torch.zeros(2, 5, 48), "cu_seqlens": torch.tensor([0, 5])}, ValueError, "B of x must be 1"),
    ({"cu_seqlens": torch.tensor([0, 3])}, ValueError, "cu_seqlens must end at T=5"),
    ({"cu_seqlens": torch.tensor([0, 4, 2, 5])}, ValueError, "cu_seqlens must be non-decreasing"),
    ({"cu_seqlens": torch.tensor([0.0, 5.0])}, TypeError, "cu_seqlens must be int32 or int64"),
    ({"activation": "gelu"}, ValueError, "activation must be None or 'silu', got 'gelu'"),
    ({"backend": "cuda"}, ValueError, "backend must be None or one of"),
    ({"x": torch.zeros(5, 48)}, ValueError, r"x must have shape \[B, T, C\]"),
    ({"x": torch.zeros(1, 5, 48, dtype=torch.int32)}, TypeError, "x must be float64"),
])
def test_bad_inputs_name_the_argument(kwargs, error, match):
    args = {"x": torch.zeros(1, 5, 48), "weight": torch.zeros(48, 4), **kwargs}
    with pytest.raises(error, match=match):
        causal_conv1d(**args)


@needs_triton
def test_triton_refuses_float64():
    x, weight = make_inputs(1, 5, 16, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        causal_conv1d(x, weight, backend="triton")


@needs_triton
def test_triton_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementations and autograd registration, as torch.compile needs them."""
    from deltanet.ops.triton import short_conv

    x, weight = make_inputs(1, 20, 24, 4, dtype=torch.float16, seed=9)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(10)).half()
    for doc_position, silu in ((None, True), (document_positions(torch.tensor([0, 3, 20]), 20), False)):
        torch.library.opcheck(short_conv.causal_conv1d_fwd, (x, weight, doc_position, silu))
        torch.library.opcheck(short_conv.causal_conv1d_bwd, (x, weight, doc_position, silu, dy))


@needs_triton
def test_triton_backend_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) through the custom ops, forward and backward (aot_eager: the fake
    implementations and the autograd formula are traced; no C++ compiler needed on the CPU). Without
    cu_seqlens: the validation reads cu_seqlens on the host, a graph break (as in chunk_delta_rule)."""
    x, weight = make_inputs(2, 37, 48, 4, seed=11)
    eager = outputs_and_grads(x, weight, seed=7, backend="triton", activation="silu")
    compiled_conv = torch.compile(causal_conv1d, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    y = compiled_conv(*leaves, activation="silu", backend="triton")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    compiled = [y, *torch.autograd.grad((y.double() * dy).sum(), leaves)]
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))
