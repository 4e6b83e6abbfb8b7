"""Every Triton op has two autograd routes: in eager mode an autograd.Function around the custom op (cheaper
on the host), under torch.compile the custom op's registered formula (one graph node, no break). Both must
give the same values and gradients; fullgraph=True fails the test on any graph break."""

from __future__ import annotations

import pytest
import torch

from deltanet.ops import causal_conv1d, chunk_delta_rule, cross_entropy, qkv_features, rms_norm, swiglu

pytest.importorskip("triton")


def small_model(x, weight, gate, targets, beta):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rms_norm(x, weight, gate=gate, out_dtype=torch.float32, backend="triton")
    taps = torch.linspace(-1, 1, 4 * y.shape[-1]).view(-1, 4)
    y = causal_conv1d(y, taps, activation="silu", backend="triton")
    # two passed-through channels after q|k|v (as DeltaNet's beta logits): they scale beta below
    q, k, v, passed = qkv_features(torch.cat([y, 0.5 * y, y.flip(-1), y[..., :2]], dim=-1),
                                   torch.cat([taps, taps, taps]), 2, backend="triton", passthrough=2)
    beta = beta * torch.sigmoid(passed)
    # use_qk_l2norm on top of the already normalised q and k: a no-op in value, but it puts the op's own
    # norm kernels into the compiled graph too.
    o, _ = chunk_delta_rule(q, k, v, beta, backend="triton", use_qk_l2norm=True, chunk_size=16)
    h = swiglu(o.reshape(2, 8, 32), y * 2, backend="triton")
    return cross_entropy(h.reshape(-1, h.shape[-1]), targets, backend="triton")


@pytest.mark.parametrize("saved", ["inputs", "intermediates"])
def test_eager_and_compiled_routes_agree(monkeypatch, saved):
    """saved: what the delta-rule op keeps for its backward (its forward's extra outputs under compile)."""
    from deltanet.ops.triton.common import LAUNCH

    monkeypatch.setitem(LAUNCH, "backward", {"saved": saved})
    g = torch.Generator().manual_seed(0)
    x, gate = (torch.randn(2, 8, 32, generator=g, requires_grad=True) for _ in range(2))
    weight = torch.randn(32, generator=g, requires_grad=True)
    beta = torch.rand(2, 8, 2, generator=g, requires_grad=True)
    targets = torch.randint(0, 32, (16,), generator=g)
    leaves = (x, weight, gate, beta)
    eager = small_model(x, weight, gate, targets, beta)
    eager_grads = torch.autograd.grad(eager, leaves)
    compiled_fn = torch.compile(small_model, fullgraph=True, backend="aot_eager")
    compiled = compiled_fn(x, weight, gate, targets, beta)
    compiled_grads = torch.autograd.grad(compiled, leaves)
    assert torch.isfinite(eager) and eager.grad_fn is not None
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)  # the same kernels in the same order
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_direct_route_only_for_plain_tensors(monkeypatch):
    """call_op runs an op's function directly for plain tensors and parameters (eager, host cost) and through
    the dispatcher otherwise: meta tensors get the registered fake implementation (shapes only, no kernel),
    and an argument that requires grad under grad mode goes through the op (a double backward must fail
    loudly). Both routes give the same values."""
    from deltanet.ops.triton import common
    from deltanet.ops.triton.row_norm import row_norm_fwd

    direct_calls = []
    function = common._IMPLEMENTATIONS[row_norm_fwd]
    monkeypatch.setitem(common._IMPLEMENTATIONS, row_norm_fwd,
                        lambda *args: direct_calls.append(1) or function(*args))
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(6, 32, generator=g), torch.nn.Parameter(torch.randn(32, generator=g))
    with torch.no_grad():
        direct = common.call_op(row_norm_fwd, x, weight, None, 1 / 32, 1e-6, torch.float32)
    assert len(direct_calls) == 1  # a Parameter is a plain tensor here
    dispatched = row_norm_fwd(x, weight.detach(), None, 1 / 32, 1e-6, torch.float32)
    for a, b in zip(direct, dispatched):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    y, rstd = common.call_op(row_norm_fwd, x.to("meta"), weight.detach().to("meta"), None, 1 / 32, 1e-6,
                             torch.bfloat16)
    assert y.is_meta and y.shape == (6, 32) and y.dtype == torch.bfloat16 and rstd.shape == (6,)
    common.call_op(row_norm_fwd, x, weight, None, 1 / 32, 1e-6, torch.float32)  # grad mode, requires grad
    assert len(direct_calls) == 1


def test_double_backward_through_a_triton_op_fails_loudly():
    x = torch.randn(4, 32, requires_grad=True)
    weight = torch.randn(32, requires_grad=True)
    y = rms_norm(x, weight, backend="triton")
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd"):
        dx.sum().backward()
