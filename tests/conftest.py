"""Shared helpers for the tests: seeded inputs and the error measure used throughout."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, run the Triton kernels on the CPU in Triton's interpreter. Must be set before any
# kernel module is imported: @triton.jit decides at decoration time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from deltanet.ops import l2_normalize


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a module of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): as
    fast for them, the same result whatever the machine's core count, and not slowed 10-100x on a busy shared
    machine (two threads that wait for each other under oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(
    B: int,
    T: int,
    H: int,
    K: int,
    V: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    num_states: int | None = None,
    device: str = "cpu",
    requires_grad: bool = False,
):
    """Random delta-rule inputs: unit-norm keys, beta in (0, 2), and a random initial state [N, H, K, V].

    Generated in float64 and then cast, so every dtype sees the same underlying values.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    k = l2_normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = 2 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    state = torch.randn(num_states or B, H, K, V, generator=g, dtype=torch.float64)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors = [t.to(device=device, dtype=dtype) for t in (q, k, v, beta)] + [state.to(device, state_dtype)]
    if requires_grad:
        tensors = [t.requires_grad_() for t in tensors]
    return tensors


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64: the error measure of every test."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def assert_named_close(names, actual, expected, bound: float) -> None:
    """Each actual tensor finite and within `bound` (rel_err) of its expected one; failures name it."""
    for name, a, e in zip(names, actual, expected):
        assert torch.isfinite(a).all(), f"{name} has NaN/Inf (an unwritten element?)"
        err = rel_err(a, e)
        assert err <= bound, f"{name}: relative error {err:.2e} > {bound:.0e}"


@pytest.fixture
def nan_filled_allocations():
    """Fill every uninitialised allocation with NaN (deterministic mode), so that an element a kernel forgets
    to write fails the test."""
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.utils.deterministic.fill_uninitialized_memory = before[1]
