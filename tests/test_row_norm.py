"""RMSNorm (plain, weighted, gated) and L2 normalisation: the Triton kernels (interpreter on the CPU, see
conftest) and the PyTorch path against an independent float64 formula, forward and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

from deltanet.layers import GatedRMSNorm, RMSNorm
from deltanet.ops import l2_normalize
from deltanet.ops.rms_norm import rms_norm

pytest.importorskip("triton")

# float32: each output is a handful of roundings (sum of D squares, rsqrt, two products), ~1e-7 each; 1e-5
# leaves room for D = 200 terms in the sums of the backward.
FP32_BOUND = 1e-5
# float16 inputs and outputs: unit roundoff 4.9e-4; an output is rounded once after float32 arithmetic and the
# gradients once more through dy -> 2u, bound 4u.
FP16_BOUND = 2e-3


def reference(x, weight, gate, eps, mean):
    """The formula written out in float64, independent of both implementations."""
    x = x.double()
    denominator = x.pow(2).mean(-1, keepdim=True) if mean else x.pow(2).sum(-1, keepdim=True)
    y = x / torch.sqrt(denominator + eps)
    if weight is not None:
        y = y * weight.double()
    if gate is not None:
        g = gate.double()
        y = y * g * torch.sigmoid(g)
    return y


def run(fn, x, weight, gate, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, gate) if t is not None]
    it = iter(leaves)
    args = [next(it) if t is not None else None for t in (x, weight, gate)]
    y = fn(*args)
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    return [y, *grads]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "rows, dim, with_weight, with_gate",
    [(37, 96, True, False), (5, 200, True, True), (70, 128, False, False), (1, 16, False, True)],
)
def test_rms_norm_matches_float64(backend, dtype, rows, dim, with_weight, with_gate):
    g = torch.Generator().manual_seed(rows * dim)
    x = (3 * torch.randn(2, rows, dim, generator=g, dtype=torch.float64)).to(dtype)
    weight = (1 + torch.randn(dim, generator=g, dtype=torch.float64)).float() if with_weight else None
    gate = torch.randn(2, rows, dim, generator=g, dtype=torch.float64).to(dtype) if with_gate else None
    dy = torch.randn(2, rows, dim, generator=g, dtype=torch.float64)
    eps = 1e-6
    actual = run(lambda x, w, gt: rms_norm(x, w, eps, gate=gt, backend=backend), x, weight, gate, dy)
    expected = run(lambda x, w, gt: reference(x, w, gt, eps, mean=True), x.double(),
                   None if weight is None else weight.double(), None if gate is None else gate.double(), dy)
    assert actual[0].dtype == dtype
    bound = FP32_BOUND if dtype == torch.float32 else FP16_BOUND
    for a, e in zip(actual, expected):
        assert a.dtype == (torch.float32 if a.shape == (dim,) else dtype)
        assert rel_err(a, e) < bound


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_l2_normalize_matches_float64(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 41, 4, 64, generator=g, dtype=torch.float64)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    actual = run(lambda t, *_: l2_normalize(t, backend=backend), x.float(), None, None, dy)
    expected = run(lambda t, *_: reference(t, None, None, 1e-6, mean=False), x, None, None, dy)
    for a, e in zip(actual, expected):
        assert rel_err(a, e) < FP32_BOUND
    assert torch.allclose(actual[0].norm(dim=-1), torch.ones(()), atol=1e-5)


def test_rms_norm_out_dtype_and_float64_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 24, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(24, generator=g, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(4, 24, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: rms_norm(a, b, 1e-6, gate=c), (x, w, gate))
    y = rms_norm(x.float().detach(), w.float().detach(), out_dtype=torch.bfloat16, backend="triton")
    assert y.dtype == torch.bfloat16
    assert rel_err(y, reference(x, w, None, 1e-6, mean=True)) < 2 ** -8  # bf16: one rounding


def test_norm_layers_under_autocast_write_the_autocast_dtype():
    norm, gated = RMSNorm(32), GatedRMSNorm(32)
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.bfloat16
        assert gated(x, torch.randn(2, 5, 32)).dtype == torch.bfloat16
    assert norm(x).dtype == torch.float32
    expected = F.rms_norm(x, (32,), norm.weight, eps=norm.eps)
    assert rel_err(norm(x), expected) < FP32_BOUND


def test_rms_norm_bad_inputs_name_the_argument():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match="gate"):
        rms_norm(x, torch.ones(8), gate=torch.ones(3, 7))
    with pytest.raises(ValueError, match="backend"):
        rms_norm(x, torch.ones(8), backend="cuda")
    with pytest.raises(TypeError, match="float64"):
        rms_norm(x.double(), None, backend="triton")


def test_row_norm_opcheck():
    from deltanet.ops.triton.row_norm import row_norm_fwd

    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 48, generator=g, requires_grad=True)
    w = torch.randn(48, generator=g, requires_grad=True)
    gate = torch.randn(9, 48, generator=g, requires_grad=True)
    torch.library.opcheck(row_norm_fwd, (x, w, gate, 1 / 48, 1e-6, torch.float32),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_rms_norm_strided_weight_and_empty_rows():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 16, generator=g)
    wide = torch.randn(32, generator=g)
    expected = reference(x, wide[::2], None, 1e-6, mean=True)
    assert rel_err(rms_norm(x, wide[::2], backend="triton"), expected) < FP32_BOUND
    empty = torch.randn(0, 16, requires_grad=True)
    w = torch.ones(16, requires_grad=True)
    y = rms_norm(empty, w, backend="triton")
    y.sum().backward()
    assert y.shape == (0, 16) and (w.grad == 0).all()
