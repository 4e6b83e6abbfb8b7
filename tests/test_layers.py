"""Tests of deltanet.layers on CPU: each mixer against a from-scratch reference, and the places where
token mixers break: decoding against a cache, packed documents, padding, sliding windows.

Equivalence tests run in float64, where two orderings of the same sums agree to ~1e-15 relative, so a
tolerance of 1e-10 leaves five orders of headroom for summation order and none for a real bug (a
wrong state hand-over or a leaked token moves outputs by ~1e-2).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from deltanet.layers import (
    Attention,
    DeltaNet,
    GatedRMSNorm,
    KVCacheEntry,
    LinearAttention,
    RMSNorm,
    SequenceInfo,
    ShortConvolution,
    apply_rotary,
    chunk_linear_attention,
    rotary_cos_sin,
)
from deltanet.layers.attention_masks import dense_attention_mask, packed_block_mask

F64_ATOL = 1e-10  # see the module docstring
HIDDEN, HEADS, HEAD_DIM = 32, 2, 16

MIXERS = {
    "deltanet": lambda: DeltaNet(HIDDEN, HEADS, HEAD_DIM, layer_idx=0, chunk_size=4),
    "deltanet-gated-negeig-noconv": lambda: DeltaNet(
        HIDDEN,
        HEADS,
        HEAD_DIM,
        layer_idx=0,
        chunk_size=4,
        use_short_conv=False,
        use_output_gate=True,
        allow_neg_eigval=True,
    ),
    "linear-attn": lambda: LinearAttention(HIDDEN, HEADS, HEAD_DIM, layer_idx=0, chunk_size=4),
    "global-attn": lambda: Attention(HIDDEN, HEADS, HEAD_DIM, layer_idx=0),
    "sliding-attn": lambda: Attention(HIDDEN, HEADS, HEAD_DIM, layer_idx=0, window=4),
}


class OneLayerCache:
    """The protocol's cache for a single mixer: anything with a `layers` list."""

    def __init__(self, mixer):
        self.layers = [mixer.new_cache_entry()]


def make_mixer(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MIXERS[name]().double()


def padded_info(token_mask: torch.Tensor) -> SequenceInfo:
    positions = (token_mask.long().cumsum(1) - 1).clamp(min=0)
    return SequenceInfo(positions=positions, token_mask=token_mask)


def run_with_cache(mixer, x, split_points):
    """Run x [B, T, D] in pieces cut at split_points, carrying the cache; return the joined outputs."""
    cache, outputs, start = OneLayerCache(mixer), [], 0
    for end in [*split_points, x.shape[1]]:
        info = SequenceInfo.contiguous(x.shape[0], end - start, x.device, offset=start)
        outputs.append(mixer(x[:, start:end], info, cache))
        start = end
    return torch.cat(outputs, dim=1), cache


# --- references -------------------------------------------------------------------------------------


def conv_reference(x, weight):
    """y_t[c] = sum_i w[c, W - 1 - i] x_{t - i}[c], zeros before the start. x [B, T, C], weight [C, 1, W]."""
    width = weight.shape[-1]
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for i in range(min(width, t + 1)):
            y[:, t] += weight[:, 0, width - 1 - i] * x[:, t - i]
    return y


def deltanet_reference(layer: DeltaNet, x: torch.Tensor) -> torch.Tensor:
    """DeltaNet written from the paper, token by token, in the dtype of x (float64 here)."""
    batch, seq_len, _ = x.shape
    heads = []
    for name in ("q", "k", "v"):
        h = x @ getattr(layer, f"{name}_proj").weight.T
        if layer.use_short_conv:
            h = conv_reference(h, getattr(layer, f"{name}_conv").weight)
        heads.append(F.silu(h).view(batch, seq_len, HEADS, HEAD_DIM))
    q, k, v = heads
    q, k = (t / torch.sqrt(t.square().sum(-1, keepdim=True) + 1e-6) for t in (q, k))  # the ops' L2 norm
    beta = torch.sigmoid(x @ layer.b_proj.weight.T) * (2 if layer.allow_neg_eigval else 1)
    state = x.new_zeros(batch, HEADS, HEAD_DIM, HEAD_DIM)
    outputs = []
    for t in range(seq_len):
        k_t, v_t, b_t = k[:, t], v[:, t], beta[:, t, :, None]
        state = (
            state + k_t[..., None] * (b_t * (v_t - torch.einsum("bhk,bhkv->bhv", k_t, state)))[..., None, :]
        )
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state) * HEAD_DIM**-0.5)
    o = torch.stack(outputs, dim=1)
    o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + layer.o_norm.eps) * layer.o_norm.weight
    if layer.use_output_gate:
        o = o * F.silu((x @ layer.g_proj.weight.T).view(batch, seq_len, HEADS, HEAD_DIM))
    return o.reshape(batch, seq_len, -1) @ layer.o_proj.weight.T


def linear_attention_reference(q, k, v, initial_state):
    state, outputs = initial_state, []
    for t in range(q.shape[1]):
        state = state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state) * q.shape[-1] ** -0.5)
    return torch.stack(outputs, dim=1), state


# --- single components ------------------------------------------------------------------------------


def test_rms_norm_matches_formula_and_keeps_low_precision_dtype():
    torch.manual_seed(0)
    norm, gated = RMSNorm(24, eps=1e-5).double(), GatedRMSNorm(24, eps=1e-5).double()
    torch.nn.init.normal_(norm.weight)
    gated.weight.data.copy_(norm.weight)
    x, gate = torch.randn(3, 5, 24, dtype=torch.float64), torch.randn(3, 5, 24, dtype=torch.float64)
    expected = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(gated(x, gate), expected * F.silu(gate), rtol=0, atol=F64_ATOL)
    out_bf16 = norm.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out_bf16.dtype == torch.bfloat16
    # Statistics in float32 leave only the bf16 rounding of input and output: a few bf16 ulps (2^-8).
    torch.testing.assert_close(out_bf16.double(), expected, rtol=3 * 2**-8, atol=3 * 2**-8)


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 6, 2, 16, dtype=torch.float64), torch.randn(1, 6, 2, 16, dtype=torch.float64)
    positions = torch.tensor([[0, 3, 4, 9, 20, 21]])

    def scores(shift: int) -> torch.Tensor:
        cos, sin = rotary_cos_sin(positions + shift, 16, dtype=torch.float64)
        q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return torch.einsum("bthd,bshd->bhts", q_rot, k_rot)

    torch.testing.assert_close(scores(100), scores(0), rtol=0, atol=F64_ATOL)
    assert not torch.allclose(scores(0), torch.einsum("bthd,bshd->bhts", q, k), atol=1e-2)


def test_short_convolution_matches_tap_sum_and_carries_state():
    torch.manual_seed(0)
    conv = ShortConvolution(6, kernel_size=4).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    full, _ = conv(x, SequenceInfo.contiguous(2, 11, x.device))
    torch.testing.assert_close(full, conv_reference(x, conv.weight), rtol=0, atol=F64_ATOL)
    pieces, state = [], None
    for start, end in [(0, 2), (2, 3), (3, 9), (9, 10), (10, 11)]:  # pieces shorter than the width too
        y, state = conv(x[:, start:end], SequenceInfo.contiguous(2, end - start, x.device), state, True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=F64_ATOL)


def test_chunk_linear_attention_matches_recurrence_with_gradients():
    torch.manual_seed(0)
    shape = (2, 13, 2, 8)
    q, k, v = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    state0 = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    o, final = chunk_linear_attention(q, k, v, initial_state=state0, chunk_size=4)
    o_ref, final_ref = linear_attention_reference(q, k, v, state0)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(final, final_ref, rtol=0, atol=F64_ATOL)
    grad_o, grad_final = torch.randn_like(o), torch.randn_like(final)  # one shared upstream gradient
    grads = torch.autograd.grad((o * grad_o).sum() + (final * grad_final).sum(), (q, k, v, state0))
    grads_ref = torch.autograd.grad(
        (o_ref * grad_o).sum() + (final_ref * grad_final).sum(), (q, k, v, state0)
    )
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("name", ["deltanet", "deltanet-gated-negeig-noconv"])
def test_deltanet_layer_matches_paper_reference(name):
    layer = make_mixer(name)
    with torch.no_grad():  # large beta weights so that 2 sigmoid(.) really leaves (0, 1)
        layer.b_proj.weight.mul_(20)
    x = torch.randn(2, 13, HIDDEN, dtype=torch.float64)
    out = layer(x, SequenceInfo.contiguous(2, 13, x.device))
    torch.testing.assert_close(out, deltanet_reference(layer, x), rtol=0, atol=F64_ATOL)


def test_dense_mask_follows_the_rule_entry_by_entry():
    torch.manual_seed(0)
    num_past, num_queries, window = 3, 5, 4
    key_mask = torch.rand(2, num_past + num_queries) > 0.3
    mask = dense_attention_mask(num_queries, num_past, window, None, key_mask, torch.device("cpu"))
    for b in range(2):
        for i in range(num_queries):
            for j in range(num_past + num_queries):
                query = num_past + i
                expected = j <= query and query - j < window and (bool(key_mask[b, j]) or j == query)
                assert bool(mask[b, 0, i, j]) == expected, (b, i, j)
    documents = torch.tensor([0, 0, 1, 1, 1])
    doc_mask = dense_attention_mask(5, 0, None, documents, None, torch.device("cpu"))[0, 0]
    assert doc_mask.tolist() == [
        [documents[i] == documents[j] and j <= i for j in range(5)] for i in range(5)
    ]


@pytest.mark.parametrize("window", [None, 3])
def test_flex_attention_path_matches_sdpa_path(window):
    torch.manual_seed(0)
    sdpa_layer = Attention(HIDDEN, HEADS, HEAD_DIM, layer_idx=0, window=window, use_flex=False)
    flex_layer = Attention(HIDDEN, HEADS, HEAD_DIM, layer_idx=0, window=window, use_flex=True)
    flex_layer.load_state_dict(sdpa_layer.state_dict())
    x = torch.randn(1, 13, HIDDEN)
    info = SequenceInfo(
        positions=torch.zeros(1, 13, dtype=torch.long), cu_seqlens=torch.tensor([0, 5, 6, 13])
    )
    info.positions = info.document_layout()[1][None]
    with warnings.catch_warnings(), torch.no_grad():  # FlexAttention has no CPU backward
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is unfused; fine for a test
        flex_out, sdpa_out = flex_layer(x, info), sdpa_layer(x, info)
    # float32: both compute the same softmax with different blockings; errors ~10 ulps of O(1) values.
    torch.testing.assert_close(flex_out, sdpa_out, rtol=0, atol=1e-5)


def random_documents(seq_len: int, generator: torch.Generator, longest: int = 200) -> torch.Tensor:
    """Non-decreasing document ids [seq_len] of random lengths 1..longest (some shorter than a block, some
    spanning several)."""
    lengths = torch.randint(1, longest, (seq_len,), generator=generator)
    ends = lengths.cumsum(0)
    return torch.searchsorted(ends, torch.arange(seq_len), right=True)


@pytest.mark.parametrize("seq_len, window, longest", [
    (1000, None, 200), (1000, 100, 200), (1000, 300, None), (700, 130, 200), (129, 64, 200),
    (1500, None, 700),
])
def test_packed_block_mask_lists_every_allowed_block_and_only_full_blocks_as_full(seq_len, window, longest):
    """Block by block against the rule on every (query, key) pair: a block with an allowed pair is listed,
    a block listed as full has every pair allowed (it skips mask_mod), and each full block is listed as
    such. Documents up to `longest` tokens (700: full blocks off the diagonal), or None: one document."""
    generator = torch.Generator().manual_seed(seq_len + (window or 0))
    packed = longest is not None
    documents = random_documents(seq_len, generator, longest) if packed else None
    allowed = dense_attention_mask(seq_len, 0, window, documents, None, torch.device("cpu"))[0, 0]
    mask = packed_block_mask(seq_len, window, documents, mask_mod=None, device=torch.device("cpu"),
                             block_size=128)
    num_blocks = -(-seq_len // 128)

    def listed(counts, indices):
        rows = [set(indices[0, 0, q, :counts[0, 0, q]].tolist()) for q in range(num_blocks)]
        return [[k in row for k in range(num_blocks)] for row in rows]

    partial = listed(mask.kv_num_blocks, mask.kv_indices)
    full = listed(mask.full_kv_num_blocks, mask.full_kv_indices)
    for q in range(num_blocks):
        for k in range(num_blocks):
            block = allowed[q * 128:(q + 1) * 128, k * 128:(k + 1) * 128]
            assert not (partial[q][k] and full[q][k]), (q, k)
            assert full[q][k] == bool(block.all()), (q, k)
            if block.any():
                assert partial[q][k] or full[q][k], (q, k)
    if packed and window is None:  # the documents leave blocks out: the mask is not plain causal
        assert sum(map(sum, partial)) + sum(map(sum, full)) < num_blocks * (num_blocks + 1) // 2
    if longest == 700:  # some document covers two whole blocks: a full block below the diagonal
        assert any(full[q][k] for q in range(num_blocks) for k in range(q))


@pytest.mark.parametrize("window", [None, 150])
def test_flex_attention_over_several_blocks_matches_sdpa(window):
    """Packed documents over 3 blocks of 128: the layer's FlexAttention path builds and takes the
    block-bound mask and equals SDPA with the dense mask. (On the CPU, eager FlexAttention applies mask_mod
    to every pair whatever the block lists say: the lists themselves are checked by the test above; on a
    GPU the compiled kernel skips unlisted blocks.)"""
    torch.manual_seed(0)
    sdpa_layer = Attention(HIDDEN, HEADS, HEAD_DIM, layer_idx=0, window=window, use_flex=False)
    flex_layer = Attention(HIDDEN, HEADS, HEAD_DIM, layer_idx=0, window=window, use_flex=True)
    flex_layer.load_state_dict(sdpa_layer.state_dict())
    lengths = [90, 200, 1, 37, 12]  # 340 tokens: documents across block bounds, one inside a block
    x = torch.randn(1, sum(lengths), HIDDEN)
    info = SequenceInfo(positions=torch.zeros(1, sum(lengths), dtype=torch.long),
                        cu_seqlens=torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()]))
    info.positions = info.document_layout()[1][None]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        flex_out, sdpa_out = flex_layer(x, info), sdpa_layer(x, info)
    # float32, as test_flex_attention_path_matches_sdpa_path
    torch.testing.assert_close(flex_out, sdpa_out, rtol=0, atol=1e-5)


# --- the inference protocol, for every mixer -----------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("prompt_len", [1, 7])
def test_prefill_then_single_steps_match_full_forward(name, prompt_len):
    mixer = make_mixer(name)
    x = torch.randn(2, 13, HIDDEN, dtype=torch.float64)
    full = mixer(x, SequenceInfo.contiguous(2, 13, x.device))
    stepped, cache = run_with_cache(mixer, x, [prompt_len, *range(prompt_len + 1, 13)])
    torch.testing.assert_close(stepped, full, rtol=0, atol=F64_ATOL)
    if isinstance(cache.layers[0], KVCacheEntry) and mixer.window is not None:
        assert cache.layers[0].get_seq_length() == mixer.window - 1  # bounded to the window


@pytest.mark.parametrize("name", list(MIXERS))
def test_packed_documents_match_separate_runs(name):
    mixer = make_mixer(name)
    lengths = [5, 1, 7]
    x = torch.randn(1, sum(lengths), HIDDEN, dtype=torch.float64)
    cu_seqlens = torch.tensor([0, 5, 6, 13])
    info = SequenceInfo(positions=torch.empty(0), cu_seqlens=cu_seqlens)
    info.positions = info.document_layout()[1][None]
    packed = mixer(x, info)
    separate = [
        mixer(x[:, start:end], SequenceInfo.contiguous(1, end - start, x.device))
        for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)
    ]
    torch.testing.assert_close(packed, torch.cat(separate, dim=1), rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("name", list(MIXERS))
def test_left_padding_matches_unpadded_prefill_and_decoding(name):
    mixer = make_mixer(name)
    num_pad, length = 3, 9
    x = torch.randn(2, length + 2, HIDDEN, dtype=torch.float64)  # 2 tokens decoded after the prompt
    garbage = 100 * torch.randn(1, num_pad, HIDDEN, dtype=torch.float64)  # padding must not matter
    row0 = torch.cat([garbage, x[:1, :length]], dim=1)  # left padding
    row1 = torch.cat([x[1:, :length], garbage], dim=1)  # right padding on the other row
    batch = torch.cat([row0, row1])
    token_mask = torch.ones(2, length + num_pad, dtype=torch.bool)
    token_mask[0, :num_pad] = False
    token_mask[1, length:] = False

    cache = OneLayerCache(mixer)
    prefill = mixer(batch, padded_info(token_mask), cache)
    alone, _ = run_with_cache(mixer, x[:1], [length, length + 1])
    torch.testing.assert_close(prefill[:1, num_pad:], alone[:, :length], rtol=0, atol=F64_ATOL)
    alone_row1 = mixer(x[1:, :length], SequenceInfo.contiguous(1, length, x.device))
    torch.testing.assert_close(prefill[1:, :length], alone_row1, rtol=0, atol=F64_ATOL)

    # Decode row 0 further: the cache must remember which of its earlier tokens were padding.
    for step in range(2):
        position = torch.tensor([[length + step], [0]])
        step_mask = torch.tensor([[True], [False]])
        out = mixer(x[:, length + step : length + step + 1], SequenceInfo(position, step_mask), cache)
        torch.testing.assert_close(
            out[:1], alone[:, length + step : length + step + 1], rtol=0, atol=F64_ATOL
        )


@pytest.mark.parametrize("name", list(MIXERS))
def test_padding_without_cache_matches_unpadded_rows(name):
    """The no-cache path (scoring, training with padding): the recurrent mixers take the fused feature op
    there, which must zero padded inputs as the cache path does."""
    mixer = make_mixer(name)
    num_pad, length = 3, 9
    x = torch.randn(2, length, HIDDEN, dtype=torch.float64)
    garbage = 100 * torch.randn(1, num_pad, HIDDEN, dtype=torch.float64)
    batch = torch.cat([torch.cat([garbage, x[:1]], dim=1), torch.cat([x[1:], garbage], dim=1)])
    token_mask = torch.ones(2, length + num_pad, dtype=torch.bool)
    token_mask[0, :num_pad] = False
    token_mask[1, length:] = False
    out = mixer(batch, padded_info(token_mask))
    for row, piece in ((0, slice(num_pad, None)), (1, slice(None, length))):
        alone = mixer(x[row : row + 1], SequenceInfo.contiguous(1, length, x.device))
        torch.testing.assert_close(out[row : row + 1, piece], alone, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("name", ["deltanet", "linear-attn"])
def test_projection_hooks_and_adapters_are_honoured(name):
    """The recurrent mixers fuse the q, k, v projections into one matmul only for plain nn.Linear modules
    without hooks: a forward hook (as adapters and quantizers use) must still change the output."""
    mixer = make_mixer(name)
    x = torch.randn(1, 6, HIDDEN, dtype=torch.float64)
    info = SequenceInfo.contiguous(1, 6, x.device)
    plain = mixer(x, info)
    assert mixer.projections_fusable()
    handle = mixer.k_proj.register_forward_hook(lambda module, args, out: 2 * out + 1)
    assert not mixer.projections_fusable()
    hooked = mixer(x, info)
    handle.remove()
    assert (hooked - plain).abs().max() > 1e-3
    with torch.no_grad():
        mixer.k_proj.weight.mul_(2)  # the hook's effect without its constant: a plain weight change
    assert mixer.projections_fusable() and (mixer(x, info) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("padded", [False, True])
def test_beta_projection_joins_the_qkv_matmul(monkeypatch, padded):
    """DeltaNet's beta logits come out of the fused q|k|v matmul (passed through the feature op): the same
    output and gradients as with b_proj called on its own; a hook on b_proj turns the fusion off."""
    mixer = make_mixer("deltanet")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, HIDDEN, dtype=torch.float64, generator=g)
    if padded:
        info = padded_info(torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool))
    else:
        info = SequenceInfo.contiguous(2, 7, x.device)
    calls = []
    original = mixer.write_strength

    def recording_write_strength(hidden_states, info, logits=None):
        calls.append(logits is not None)
        return original(hidden_states, info, logits)

    monkeypatch.setattr(mixer, "write_strength", recording_write_strength)
    results = {}
    # (fused, fused_width_multiple): the fused matmul as it is (3HD + H wide), padded with zero weight rows
    # to a multiple of 64, and b_proj on its own
    for fused, multiple in ((True, 1), (True, 64), (False, 1)):
        monkeypatch.setattr(type(mixer), "fuse_extra_projections", fused)
        monkeypatch.setattr(type(mixer), "fused_width_multiple", multiple)
        mixer.zero_grad()
        out = mixer(x, info)
        do = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        (out * do).sum().backward()
        results[fused, multiple] = [out.detach(), mixer.b_proj.weight.grad.clone(),
                                    mixer.q_proj.weight.grad.clone(), mixer.v_proj.weight.grad.clone()]
    assert calls == [True, True, False]
    for variant in ((True, 1), (True, 64)):
        for a, b in zip(results[variant], results[False, 1]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert results[True, 1][1].abs().max() > 0  # beta's projection does get a gradient through the fused path
    monkeypatch.setattr(type(mixer), "fused_width_multiple", 1)
    monkeypatch.setattr(type(mixer), "fuse_extra_projections", True)
    handle = mixer.b_proj.register_forward_hook(lambda module, args, out: out + 1)
    calls.clear()
    hooked = mixer(x, info)
    assert calls == [False] and (hooked - results[True, 1][0]).abs().max() > 1e-6
    assert not mixer.projections_fusable()
    monkeypatch.setattr(type(mixer), "fuse_extra_projections", False)  # b_proj is no longer part of it
    assert mixer.projections_fusable()
    handle.remove()


@pytest.mark.parametrize("name", ["deltanet", "linear-attn"])
def test_packed_prefill_into_a_cache_is_refused(name):
    mixer = make_mixer(name)
    x = torch.randn(1, 6, HIDDEN, dtype=torch.float64)
    info = SequenceInfo(positions=torch.empty(0), cu_seqlens=torch.tensor([0, 2, 6]))
    info.positions = info.document_layout()[1][None]
    with pytest.raises(ValueError, match="conv state cannot be carried across packed documents"):
        mixer(x, info, OneLayerCache(mixer))


@pytest.mark.parametrize("name", ["deltanet", "linear-attn"])
def test_decoding_after_a_right_padded_prefill(name):
    """A right-padded row keeps decoding from its last real tokens: the conv state must skip the padding."""
    mixer = make_mixer(name)
    length, num_pad = 5, 3
    x = torch.randn(1, length + 2, HIDDEN, dtype=torch.float64)
    batch = torch.cat([x[:, :length], 100 * torch.randn(1, num_pad, HIDDEN, dtype=torch.float64)], dim=1)
    token_mask = torch.ones(1, length + num_pad, dtype=torch.bool)
    token_mask[0, length:] = False
    cache = OneLayerCache(mixer)
    mixer(batch, padded_info(token_mask), cache)
    alone, _ = run_with_cache(mixer, x, [length, length + 1])
    for step in range(2):
        position = torch.tensor([[length + step]])
        step_info = SequenceInfo(position, torch.ones(1, 1, dtype=torch.bool))
        out = mixer(x[:, length + step : length + step + 1], step_info, cache)
        torch.testing.assert_close(out, alone[:, length + step : length + step + 1], rtol=0, atol=F64_ATOL)


def test_short_convolution_decoding_matches_prefill_under_autocast():
    """Decoding from a conv state computes in float32 like the fused prefill path, also under autocast (which
    would otherwise run conv1d in bf16): both round once, to bf16, so each output is within bf16's unit
    roundoff u = 2^-8 of the float64 value."""
    torch.manual_seed(0)
    conv = ShortConvolution(64, kernel_size=4, activation="silu")
    x = torch.randn(2, 9, 64).to(torch.bfloat16)
    reference = F.silu(conv_reference(x.double(), conv.weight.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = conv(x, SequenceInfo.contiguous(2, 9, x.device))
        pieces, state = [], None
        for start in range(9):  # token by token, all from the conv state
            y, state = conv(x[:, start : start + 1], SequenceInfo.contiguous(2, 1, x.device), state, True)
            pieces.append(y)
    for out in (full, torch.cat(pieces, 1)):
        assert out.dtype == torch.bfloat16
        assert ((out.double() - reference).abs() <= 2**-8 * reference.abs() + 1e-30).all()
