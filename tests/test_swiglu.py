"""silu(gate) * up: the Triton kernels (interpreter on the CPU) and the PyTorch path against float64."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err

from deltanet.ops import swiglu

pytest.importorskip("triton")

# float32: 3-4 roundings per element (~1e-7 each) -> 1e-6. float16: inputs exact, each result rounded to fp16
# once after float32 arithmetic (u = 4.9e-4); the PyTorch path rounds silu(g) too -> 2u; bound 4u.
BOUNDS = {torch.float32: 1e-6, torch.float16: 2e-3}


def reference(gate, up):
    gate, up = gate.double(), up.double()
    return gate * torch.sigmoid(gate) * up


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_swiglu_matches_float64(backend, dtype):
    g = torch.Generator().manual_seed(0)
    shape = (3, 5, 1000)  # 15000 elements: several blocks, the last one partial
    gate, up, dh = (3 * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    leaves = [t.to(dtype).requires_grad_() for t in (gate, up)]
    h = swiglu(*leaves, backend=backend)
    grads = torch.autograd.grad(h, leaves, dh.to(dtype))
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_h = reference(*ref_leaves)
    ref_grads = torch.autograd.grad(ref_h, ref_leaves, dh.to(dtype).double())
    assert h.dtype == dtype
    for a, e in zip([h, *grads], [ref_h, *ref_grads]):
        assert rel_err(a, e) < BOUNDS[dtype]


def test_swiglu_bad_inputs_and_opcheck():
    with pytest.raises(ValueError, match="gate and up"):
        swiglu(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="backend"):
        swiglu(torch.randn(2, 3), torch.randn(2, 3), backend="cuda")
    from deltanet.ops.triton.swiglu import swiglu_fwd

    g = torch.Generator().manual_seed(1)
    gate, up = (torch.randn(4, 9, generator=g, requires_grad=True) for _ in range(2))
    torch.library.opcheck(swiglu_fwd, (gate, up),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
