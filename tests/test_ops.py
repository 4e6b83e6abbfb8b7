"""The PyTorch delta-rule ops: chunked form against the token-by-token recurrence (the specification).

Errors are max|a - b| / max|ref| against a float64 run of the recurrence on the same values.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, rel_err

from deltanet.ops import chunk_delta_rule, l2_normalize, recurrent_delta_rule

SHAPES = [  # (B, T, H, K, V)
    (1, 1, 1, 8, 8),
    (2, 63, 2, 16, 24),
    (2, 64, 3, 24, 16),
    (1, 65, 2, 16, 16),
    (3, 200, 2, 32, 8),
]


@pytest.mark.parametrize("B,T,H,K,V", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_matches_recurrent_float64(B, T, H, K, V, with_state):
    q, k, v, beta, s0 = make_inputs(B, T, H, K, V, seed=T + K)
    s0 = s0 if with_state else None
    o_ref, s_ref = recurrent_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True)
    o, s = chunk_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True, chunk_size=16)
    assert o.dtype == torch.float64 and s.dtype == torch.float64
    assert o.shape == (B, T, H, V) and s.shape == (B, H, K, V)
    assert rel_err(o, o_ref) <= 1e-10
    assert rel_err(s, s_ref) <= 1e-10
    _, no_state = chunk_delta_rule(q, k, v, beta, initial_state=s0)
    assert no_state is None


@pytest.mark.parametrize("chunk_size", [1, 4, 64, 128])
def test_chunk_sizes_agree(chunk_size):
    q, k, v, beta, s0 = make_inputs(2, 100, 2, 16, 16, seed=3)
    o_ref, s_ref = recurrent_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True)
    o, s = chunk_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    assert rel_err(o, o_ref) <= 1e-10 and rel_err(s, s_ref) <= 1e-10


def test_float32_against_float64_reference():
    q, k, v, beta, s0 = make_inputs(2, 300, 2, 64, 32, seed=1)
    o_ref, s_ref = recurrent_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True)
    f32 = [t.float() for t in (q, k, v, beta, s0)]
    o, s = chunk_delta_rule(*f32[:4], initial_state=f32[4], output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    # float32 has a unit roundoff of 6e-8; a few hundred accumulation steps stay well under 1e-5.
    assert rel_err(o, o_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_against_float64_reference(dtype):
    q, k, v, beta, s0 = make_inputs(2, 150, 2, 32, 32, dtype=dtype, seed=2)
    # The reference sees exactly the rounded low-precision values, upcast.
    o_ref, s_ref = recurrent_delta_rule(
        *(t.double() for t in (q, k, v, beta)), initial_state=s0.double(), output_final_state=True
    )
    o_rec, s_rec = recurrent_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True)
    o, s = chunk_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True)
    assert o.dtype == dtype and s.dtype == torch.float32
    # The FlashAttention method: no worse than 2x the error of the recurrence run in the same dtype
    # (which here is dominated by rounding o to `dtype`), plus float32 accumulation noise.
    assert rel_err(o, o_ref) <= 2 * rel_err(o_rec, o_ref) + 1e-5
    assert rel_err(s, s_ref) <= 2 * rel_err(s_rec, s_ref) + 1e-5
    assert rel_err(o, o_ref) <= 2 * torch.finfo(dtype).eps  # sanity: about one rounding of o


def test_state_hand_over_equals_whole_sequence():
    q, k, v, beta, s0 = make_inputs(2, 150, 2, 16, 16, seed=4)
    o_whole, s_whole = chunk_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True)
    split = 77
    o1, s1 = chunk_delta_rule(
        q[:, :split], k[:, :split], v[:, :split], beta[:, :split], initial_state=s0, output_final_state=True
    )
    o2, s2 = chunk_delta_rule(
        q[:, split:], k[:, split:], v[:, split:], beta[:, split:], initial_state=s1, output_final_state=True
    )
    assert rel_err(torch.cat([o1, o2], dim=1), o_whole) <= 1e-10
    assert rel_err(s2, s_whole) <= 1e-10


@pytest.mark.parametrize("op", [chunk_delta_rule, recurrent_delta_rule])
@pytest.mark.parametrize("lengths", [[1, 17, 64, 3, 100], [40, 0, 9]])
def test_cu_seqlens_equals_each_sequence_alone(op, lengths):
    T, H, K, V = sum(lengths), 2, 16, 8
    N = len(lengths)
    q, k, v, beta, s0 = make_inputs(1, T, H, K, V, seed=5, num_states=N)
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    kwargs = {"chunk_size": 16} if op is chunk_delta_rule else {}
    o, s = op(q, k, v, beta, initial_state=s0, output_final_state=True, cu_seqlens=cu_seqlens, **kwargs)
    assert o.shape == (1, T, H, V) and s.shape == (N, H, K, V)
    for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        if start == end:
            assert torch.equal(s[n], s0[n])  # an empty sequence passes its state through
            continue
        piece = slice(start, end)
        o_n, s_n = recurrent_delta_rule(
            q[:, piece], k[:, piece], v[:, piece], beta[:, piece], initial_state=s0[n : n + 1],
            output_final_state=True,
        )
        assert rel_err(o[:, piece], o_n) <= 1e-10
        assert rel_err(s[n : n + 1], s_n) <= 1e-10


def test_gradcheck_recurrent():
    inputs = make_inputs(1, 5, 2, 3, 4, seed=6, requires_grad=True)

    def fn(q, k, v, b, s):
        return recurrent_delta_rule(q, k, v, b, initial_state=s, output_final_state=True)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("cu", [False, True])
def test_gradcheck_chunk(cu):
    if cu:  # two packed sequences, one not a multiple of the chunk size
        inputs = make_inputs(1, 7, 2, 3, 4, seed=7, num_states=2, requires_grad=True)
        cu_seqlens = torch.tensor([0, 5, 7])
    else:
        inputs = make_inputs(2, 7, 2, 3, 4, seed=7, requires_grad=True)
        cu_seqlens = None

    def fn(q, k, v, b, s):
        return chunk_delta_rule(
            q, k, v, b, initial_state=s, output_final_state=True, chunk_size=2, cu_seqlens=cu_seqlens
        )

    assert torch.autograd.gradcheck(fn, inputs)


def test_chunk_gradients_match_recurrent():
    inputs = make_inputs(2, 70, 2, 16, 8, seed=8, requires_grad=True)
    g = torch.Generator().manual_seed(9)
    grad_o = torch.randn(2, 70, 2, 8, generator=g, dtype=torch.float64)
    grad_s = torch.randn(2, 2, 16, 8, generator=g, dtype=torch.float64)
    grads = []
    for op, kw in ((recurrent_delta_rule, {}), (chunk_delta_rule, {"chunk_size": 16})):
        o, s = op(*inputs[:4], initial_state=inputs[4], output_final_state=True, **kw)
        grads.append(torch.autograd.grad((o * grad_o).sum() + (s * grad_s).sum(), inputs))
    for name, g_ref, g_chunk in zip(("q", "k", "v", "beta", "initial_state"), *grads):
        assert rel_err(g_chunk, g_ref) <= 1e-10, name


def test_use_qk_l2norm_equals_normalising_first():
    q, k, v, beta, _ = make_inputs(1, 40, 2, 16, 16, seed=10)
    k_raw = 3 * k + 0.5  # not unit norm
    o_ref, _ = recurrent_delta_rule(l2_normalize(q), l2_normalize(k_raw), v, beta)
    for op in (chunk_delta_rule, recurrent_delta_rule):
        o, _ = op(q, k_raw, v, beta, use_qk_l2norm=True)
        assert rel_err(o, o_ref) <= 1e-10


def test_finite_at_long_length():
    # beta near 2 makes (I - beta k k^T) a near-reflection: the hardest valid case for stability.
    q, k, v, beta, _ = make_inputs(1, 20000, 1, 16, 16, dtype=torch.float32, seed=11)
    beta = 2 - 1e-3 * beta
    o, s = chunk_delta_rule(q, k, v, beta, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert s.abs().max() < 1e3  # the state stays bounded: |v| ~ 1 and the transitions are contractions


def test_default_scale_is_inverse_sqrt_key_dim():
    q, k, v, beta, _ = make_inputs(1, 10, 1, 16, 8, seed=12)
    o_default, _ = chunk_delta_rule(q, k, v, beta)
    o_explicit, _ = chunk_delta_rule(q, k, v, beta, scale=0.25)
    o_other, _ = chunk_delta_rule(q, k, v, beta, scale=1.0)
    assert torch.equal(o_default, o_explicit)
    assert rel_err(o_other, 4 * o_default) <= 1e-12


def _bad_calls():
    q, k, v, beta, s0 = make_inputs(2, 10, 2, 8, 4, dtype=torch.float32)
    cu = torch.tensor([0, 4, 10])

    def one(t):  # B = 1 versions for cu_seqlens
        return t[:1]

    yield "q", ValueError, dict(q=q[0])
    yield "k", ValueError, dict(k=k[:, :9])
    yield "v", ValueError, dict(v=v[:, :, :1])
    yield "beta", ValueError, dict(beta=beta[..., None])
    yield "beta", ValueError, dict(beta=beta[:, :, :1])  # would broadcast
    yield "q", TypeError, dict(q=q.to(torch.int64))
    yield "v", TypeError, dict(v=v.to(torch.int32))
    yield "k", TypeError, dict(k=k.numpy())
    yield "initial_state", ValueError, dict(initial_state=s0[:1])
    yield "initial_state", ValueError, dict(initial_state=s0.transpose(-1, -2))
    yield "cu_seqlens", ValueError, dict(cu_seqlens=cu)  # B = 2
    q1, k1, v1, b1 = one(q), one(k), one(v), one(beta)
    single = dict(q=q1, k=k1, v=v1, beta=b1)
    yield "cu_seqlens", ValueError, dict(single, cu_seqlens=torch.tensor([1, 4, 10]))
    yield "cu_seqlens", ValueError, dict(single, cu_seqlens=torch.tensor([0, 6, 4, 10]))
    yield "cu_seqlens", ValueError, dict(single, cu_seqlens=torch.tensor([0, 4, 9]))
    yield "cu_seqlens", TypeError, dict(single, cu_seqlens=torch.tensor([0.0, 4.0, 10.0]))
    yield "initial_state", ValueError, dict(single, cu_seqlens=cu, initial_state=s0[:1])
    yield "chunk_size", ValueError, dict(chunk_size=48)
    yield "chunk_size", ValueError, dict(chunk_size=0)
    yield "backend", ValueError, dict(backend="cuda")
    yield "head dim", ValueError, dict(
        q=torch.randn(2, 10, 2, 300), k=torch.randn(2, 10, 2, 300)
    )


@pytest.mark.parametrize("arg,error,overrides", list(_bad_calls()))
def test_bad_input_names_the_argument(arg, error, overrides):
    q, k, v, beta, _ = make_inputs(2, 10, 2, 8, 4, dtype=torch.float32)
    kwargs = dict(q=q, k=k, v=v, beta=beta) | overrides
    ops = [chunk_delta_rule]
    if "chunk_size" not in overrides and "backend" not in overrides:
        ops.append(recurrent_delta_rule)
    for op in ops:
        with pytest.raises(error, match=arg):
            op(**kwargs)


def test_mixed_devices_rejected():
    # The meta device stands in for a second device on machines without a GPU.
    q, k, v, beta, _ = make_inputs(1, 4, 1, 8, 8, dtype=torch.float32)
    for name, args in (("k", (q, k.to("meta"), v, beta)), ("beta", (q, k, v, beta.to("meta")))):
        for op in (chunk_delta_rule, recurrent_delta_rule):
            with pytest.raises(ValueError, match=name):
                op(*args)
