"""The cross-entropy op (Triton under the interpreter on the CPU, and PyTorch) against float64
F.cross_entropy, forward and gradient, and the model loss's label shift."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

from deltanet.models.loss import IGNORE_INDEX, causal_lm_loss
from deltanet.ops.cross_entropy import cross_entropy

pytest.importorskip("triton")

# float32: the logsumexp of V terms carries ~log2(V) roundings of 6e-8 -> 1e-6 for V = 5000; 1e-5 bound.
FP32_BOUND = 1e-5
# float16 logits are exact inputs here (the reference reads the same fp16 values); only the gradient is
# rounded to fp16 once (u = 4.9e-4), the loss stays float32: bound 2u on the gradient.
FP16_GRAD_BOUND = 1e-3


def loss_and_grad(fn, logits, targets):
    leaf = logits.detach().clone().requires_grad_()
    loss = fn(leaf, targets)
    (grad,) = torch.autograd.grad(3.0 * loss, leaf)  # a factor != 1: the incoming gradient must be used
    return loss, grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows, vocab", [(7, 5000), (3, 37)])
def test_cross_entropy_matches_float64(backend, dtype, rows, vocab):
    g = torch.Generator().manual_seed(rows + vocab)
    logits = (4 * torch.randn(rows, vocab, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[1] = IGNORE_INDEX
    loss, grad = loss_and_grad(lambda x, t: cross_entropy(x, t, backend=backend), logits, targets)
    ref_loss, ref_grad = loss_and_grad(lambda x, t: F.cross_entropy(x, t, ignore_index=IGNORE_INDEX),
                                       logits.double(), targets)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert rel_err(loss, ref_loss) < FP32_BOUND
    assert rel_err(grad, ref_grad) < (FP32_BOUND if dtype == torch.float32 else FP16_GRAD_BOUND)
    assert (grad[1] == 0).all()  # the ignored row


def test_cross_entropy_strided_logits_and_all_ignored():
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(4, 300, generator=g)
    logits = wide[:, :200]  # rows 300 apart
    targets = torch.tensor([5, 199, 0, 17])
    expected = F.cross_entropy(logits.double(), targets)
    assert rel_err(cross_entropy(logits, targets, backend="triton"), expected) < FP32_BOUND
    ignored = torch.full((4,), IGNORE_INDEX)
    assert torch.isnan(cross_entropy(logits, ignored, backend="triton"))
    assert torch.isnan(cross_entropy(logits, ignored, backend="torch"))


def test_cross_entropy_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(torch.randn(2, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(torch.randn(2, 4), torch.zeros(2))


def test_causal_lm_loss_shifts_labels_and_skips_ignored_targets():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    ignored = torch.zeros(2, 6, dtype=torch.bool)
    ignored[1, 3] = True  # e.g. the first token of a packed document
    terms = [F.cross_entropy(logits[b, t], labels[b, t + 1]) for b in range(2) for t in range(5)
             if not ignored[b, t + 1]]
    expected = torch.stack(terms).mean()
    assert rel_err(causal_lm_loss(logits, labels, ignored), expected) < 1e-12


def test_cross_entropy_out_of_range_targets():
    """PyTorch raises; the Triton path (which does not wait for the GPU to check) gives NaN, never a value
    read from outside the row."""
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(5), requires_grad=True)
    for bad in (10, -1):
        targets = torch.tensor([1, bad, 2])
        with pytest.raises(IndexError):
            cross_entropy(logits, targets, backend="torch")
        loss = cross_entropy(logits, targets, backend="triton")
        assert torch.isnan(loss)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isnan(grad[1]).all() and torch.isfinite(grad[0]).all()
