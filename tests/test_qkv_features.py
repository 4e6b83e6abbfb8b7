"""qkv_features (short conv + SiLU over the fused q|k|v projection, L2 norm of q and k heads), both backends,
against an independent float64 reference: F.conv1d per document, F.silu, and the norm written out.

The Triton kernels run on the CPU under TRITON_INTERPRET=1 (see conftest). Head dims 16 and 24 (24 is not a
power of two: the tile has masked lanes), T = 1, 37 and 70 (BLOCK_T 32 and 64), packed documents shorter
than W. Uninitialised allocations are NaN-filled, so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_named_close, rel_err

from deltanet.ops import causal_conv1d, l2_normalize, qkv_features

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
EPS = 1e-6
# float32: each output is a sum of W = 4 products, SiLU and a norm over D <= 24 (unit roundoff 6e-8);
# gradients add a few more terms (dweight sums B * T <= 140 products). Observed <= 4e-7; 1e-5 leaves room
# for any summation order, while a wrong tap, head or document leak is O(1e-2) or more.
FP32_BOUND = 1e-5
NAMES = ("q", "k", "v", "dqkv", "dweight")

pytestmark = pytest.mark.usefixtures("nan_filled_allocations")


def reference(qkv, weight, num_heads, cu_seqlens=None, normalize_qk=True):
    """float64: F.conv1d over each document (left-padded with W - 1 zeros), SiLU, split, per-head norm."""
    qkv, weight = qkv.double(), weight.double()
    B, T, C = qkv.shape
    W = weight.shape[1]
    bounds = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if start < end:
            x_bct = F.pad(qkv[:, start:end].transpose(1, 2), (W - 1, 0))
            pieces.append(F.conv1d(x_bct, weight[:, None, :], groups=C).transpose(1, 2))
    y = F.silu(torch.cat(pieces, dim=1))
    q, k, v = (part.reshape(B, T, num_heads, -1) for part in y.chunk(3, dim=-1))
    if normalize_qk:
        q = q / (q * q).sum(-1, keepdim=True).add(EPS).sqrt()
        k = k / (k * k).sum(-1, keepdim=True).add(EPS).sqrt()
    return q, k, v


def outputs_and_grads(qkv, weight, num_heads, seed, backend, **kwargs):
    """q, k, v and the gradients of sum_i <out_i, g_i> (random g_i) to qkv and weight."""
    leaves = [t.detach().clone().requires_grad_() for t in (qkv, weight)]
    if backend == "reference":
        leaves = [t.detach().double().requires_grad_() for t in leaves]
        outs = reference(*leaves, num_heads, **kwargs)
    else:
        outs = qkv_features(*leaves, num_heads, backend=backend, **kwargs)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    return [*outs, *torch.autograd.grad(loss, leaves)]


def make_inputs(B, T, H, D, W=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g, dtype=torch.float64)
    weight = torch.randn(3 * H * D, W, generator=g, dtype=torch.float64) * W**-0.5
    return qkv.to(dtype), weight.float()


def assert_close(actual, expected, bound):
    assert_named_close(NAMES, actual, expected, bound)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize_qk", [True, False])
@pytest.mark.parametrize("B,T,H,D,W", [
    (2, 1, 2, 16, 4), (1, 37, 3, 24, 4), (2, 70, 2, 16, 3), (1, 37, 2, 16, 1), (1, 37, 2, 16, 8),
])
def test_float32_matches_float64_reference(backend, normalize_qk, B, T, H, D, W):
    qkv, weight = make_inputs(B, T, H, D, W, seed=T + H + D)
    ref = outputs_and_grads(qkv, weight, H, seed=1, backend="reference", normalize_qk=normalize_qk)
    out = outputs_and_grads(qkv, weight, H, seed=1, backend=backend, normalize_qk=normalize_qk)
    for o in out[:3]:
        assert o.shape == (B, T, H, D) and o.dtype == torch.float32 and o.is_contiguous()
    assert_close(out, ref, FP32_BOUND)
    if normalize_qk:  # the norm really applies to q and k only
        assert torch.allclose(out[0].norm(dim=-1), torch.ones(B, T, H), atol=1e-4)
        assert out[2].norm(dim=-1).std() > 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_documents_restart_the_conv(backend):
    lengths = [1, 3, 0, 40, 2, 24]  # length 1, shorter than W, empty, across the tile boundary at 32
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    qkv, weight = make_inputs(1, sum(lengths), 2, 16, seed=3)
    ref = outputs_and_grads(qkv, weight, 2, seed=2, backend="reference", cu_seqlens=cu)
    out = outputs_and_grads(qkv, weight, 2, seed=2, backend=backend, cu_seqlens=cu.long())
    assert_close(out, ref, FP32_BOUND)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_separate_ops(backend):
    """The fused op is causal_conv1d(activation='silu') on each third, then l2_normalize of q and k."""
    qkv, weight = make_inputs(2, 37, 2, 16, seed=4)
    q, k, v = qkv_features(qkv, weight, 2, backend=backend)
    parts = [causal_conv1d(x, w, activation="silu", backend=backend).view(2, 37, 2, 16)
             for x, w in zip(qkv.chunk(3, -1), weight.chunk(3, 0))]
    for fused, separate in zip((q, k, v), (l2_normalize(parts[0]), l2_normalize(parts[1]), parts[2])):
        assert rel_err(fused, separate) <= FP32_BOUND


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_passthrough_channels_come_back_with_their_gradient(backend, packed):
    """qkv = [features | E other channels] (one matmul for q|k|v and, say, beta's logits): the features are
    those of the first 3HD channels alone, the E channels come back as they are, and the gradient of qkv is
    the features' gradient next to the passed-through channels' own."""
    E = 3
    lengths = [5, 30, 2]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32) if packed else None
    B, T = (1, sum(lengths)) if packed else (2, 21)
    qkv, weight = make_inputs(B, T, 2, 16, seed=13)
    extra = torch.randn(B, T, E, generator=torch.Generator().manual_seed(14))
    ref = outputs_and_grads(qkv, weight, 2, seed=5, backend="reference", cu_seqlens=cu)
    leaves = [torch.cat([qkv, extra], -1).requires_grad_(), weight.clone().requires_grad_()]
    q, k, v, passed = qkv_features(*leaves, 2, cu_seqlens=cu, backend=backend, passthrough=E)
    assert passed.shape == (B, T, E) and passed.is_contiguous() and torch.equal(passed, extra)
    g = torch.Generator().manual_seed(5)  # the same output gradients as outputs_and_grads draws
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in (q, k, v))
    d_passed = torch.randn(passed.shape, generator=g)
    loss = loss + (passed.double() * d_passed.double()).sum()
    dqkv, dweight = torch.autograd.grad(loss, leaves)
    assert_close([q, k, v, dqkv[..., :-E], dweight], ref, FP32_BOUND)
    assert torch.equal(dqkv[..., -E:], d_passed)


@needs_triton
@pytest.mark.parametrize("dz_dtype", ["float32", "input"])
def test_float16_error_within_that_of_the_torch_path(monkeypatch, dz_dtype):
    """float16 (the interpreter's bfloat16 conversion truncates; see test_short_conv): the kernels' error
    against float64 at most 2x (outputs) and 3x (gradients) that of the PyTorch path in float16, with the
    backward's dz kept in float32 or rounded to the input's dtype."""
    from deltanet.ops.triton import qkv_features as kernels

    monkeypatch.setitem(kernels.LAUNCH, "bwd", {**kernels.LAUNCH["bwd"], "dz_dtype": dz_dtype})
    cu = torch.tensor([0, 2, 40, 41, 70])
    qkv, weight = make_inputs(1, 70, 2, 24, dtype=torch.float16, seed=5)
    ref = outputs_and_grads(qkv, weight, 2, seed=4, backend="reference", cu_seqlens=cu)
    torch_path = outputs_and_grads(qkv, weight, 2, seed=4, backend="torch", cu_seqlens=cu)
    kernel = outputs_and_grads(qkv, weight, 2, seed=4, backend="triton", cu_seqlens=cu)
    for name, a, p, e, factor in zip(NAMES, kernel, torch_path, ref, (2, 2, 2, 3, 3)):
        assert torch.isfinite(a).all(), f"{name} has NaN/Inf"
        err, torch_err = rel_err(a, e), rel_err(p, e)
        assert err <= factor * torch_err, f"{name}: kernel {err:.2e} > {factor} x torch path {torch_err:.2e}"


@needs_triton
def test_unused_output_gets_zero_gradient():
    """Only q in the loss: the missing dk, dv count as zeros (the v and k channels get no gradient)."""
    qkv, weight = make_inputs(1, 37, 2, 16, seed=6)
    leaves = [t.clone().requires_grad_() for t in (qkv, weight)]
    q, _, _ = qkv_features(*leaves, 2, backend="triton")
    dqkv, dweight = torch.autograd.grad((q * torch.randn(q.shape, generator=torch.Generator().manual_seed(0)))
                                        .sum(), leaves)
    assert dqkv[..., 32:].abs().max() == 0 and dqkv[..., :32].abs().max() > 0
    assert dweight[32:].abs().max() == 0 and dweight[:32].abs().max() > 0


def test_torch_path_gradcheck_float64():
    g = torch.Generator().manual_seed(7)
    qkv = torch.randn(1, 9, 12, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 1, 3, 9])
    assert torch.autograd.gradcheck(
        lambda a, b: qkv_features(a, b, 2, cu_seqlens=cu, backend="torch"), (qkv, weight))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"num_heads": 5}, ValueError, r"qkv's last dim must be 3 \* num_heads \* head_dim"),
    ({"num_heads": 0}, ValueError, "num_heads must be a positive int"),
    ({"qkv": torch.zeros(1, 5, 864), "weight": torch.zeros(864, 4), "num_heads": 1, "backend": "triton"},
     ValueError, "backend='triton' takes head_dim at most 256"),
    ({"weight": torch.zeros(47, 4)}, ValueError, r"weight must have shape \[C, W\] = \[48, W\]"),
    ({"qkv": torch.zeros(5, 48)}, ValueError, r"qkv must have shape \[B, T, C\]"),
    ({"qkv": torch.zeros(2, 5, 48), "cu_seqlens": torch.tensor([0, 5])}, ValueError, "B of qkv must be 1"),
    ({"passthrough": -1}, ValueError, "passthrough must be an int >= 0"),
    ({"passthrough": 48}, ValueError,
     r"qkv must have shape \[B, T, 3 \* num_heads \* head_dim \+ passthrough\]"),
    ({"qkv": torch.zeros(1, 5, 50), "passthrough": 3}, ValueError,
     r"weight must have shape \[C, W\] = \[47, W\]"),
])
def test_bad_inputs_name_the_argument(kwargs, error, match):
    args = {"qkv": torch.zeros(1, 5, 48), "weight": torch.zeros(48, 4), "num_heads": 2, **kwargs}
    with pytest.raises(error, match=match):
        qkv_features(**args)


@needs_triton
def test_triton_backward_is_deterministic():
    qkv, weight = make_inputs(1, 70, 2, 16, seed=12)
    first = outputs_and_grads(qkv, weight, 2, seed=6, backend="triton")
    second = outputs_and_grads(qkv, weight, 2, seed=6, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@needs_triton
def test_triton_refuses_float64_naming_qkv():
    qkv, weight = make_inputs(1, 5, 1, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="float16 qkv, got float64; use backend='torch'"):
        qkv_features(qkv, weight, 1, backend="triton")
