"""Tests of deltanet.models on CPU: decoding against the cache, batched generation with padding, packed
documents, the loss, save/load, the Auto classes, op backends and config validation.

Tiny models (4 layers, hidden 32, 2 heads of 16, chunk 8 so that prompts span several chunks) with
fixed seeds. Tolerances follow the float64 method: the float32 forward's own error against a float64
copy of the model sets the scale a float32 alternative path (decoding, another backend) must stay
within; equivalences that hold exactly in exact arithmetic are checked in float64 at 1e-10 (two
orderings of the same float64 sums agree to ~1e-15 relative; a real leak moves logits by ~1e-3).
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch

from deltanet.layers import KVCacheEntry
from deltanet.models import PRESET_NAMES, DeltaNetConfig, DeltaNetForCausalLM, output_cache, preset_config

ARCHITECTURES = ["deltanet", "deltanet-swa", "deltanet-global", "transformer++", "linear-attn"]
TINY = dict(
    vocab_size=97, hidden_size=32, num_hidden_layers=4, num_heads=2, head_dim=16, intermediate_size=64,
    chunk_size=8, eos_token_id=None, bos_token_id=None, pad_token_id=0,
)  # fmt: skip
WINDOW = 5
F64_ATOL = 1e-10
FLOAT32_EPS = torch.finfo(torch.float32).eps


def tiny_model(arch: str, dtype: torch.dtype = torch.float32, **overrides) -> DeltaNetForCausalLM:
    if arch == "deltanet-swa":
        overrides.setdefault("attn_window", WINDOW)
    torch.manual_seed(0)
    model = DeltaNetForCausalLM(preset_config(f"{arch}-debug", **{**TINY, **overrides}))
    return model.to(dtype).eval()


def random_ids(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


def low_precision_error_bound(reference64: torch.Tensor, low_precision: torch.Tensor, factor: float) -> float:
    """factor x the low-precision path's own error, plus a few float32 ulps of the reference as a floor."""
    own_error = (low_precision.double() - reference64).abs().max().item()
    return factor * own_error + 4 * FLOAT32_EPS * reference64.abs().max().item()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("prompt_len", [7, 13])
def test_prefill_and_decoding_match_full_forward(arch, prompt_len):
    model = tiny_model(arch)
    ids = random_ids(2, prompt_len + 6)
    with torch.no_grad():
        reference64 = copy.deepcopy(model).double()(ids).logits
        forward32 = model(ids).logits
        out = model(ids[:, :prompt_len], use_cache=True)
        logits = [out.logits]
        for t in range(prompt_len, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=output_cache(out))
            logits.append(out.logits)
    decoded32 = torch.cat(logits, dim=1)
    error = (decoded32.double() - reference64).abs().max().item()
    assert error <= low_precision_error_bound(reference64, forward32, factor=2)
    for entry in output_cache(out).layers:  # sliding-window layers keep window - 1 keys, no more
        if isinstance(entry, KVCacheEntry) and entry.window is not None:
            assert entry.get_seq_length() == WINDOW - 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_generation_with_left_padding_matches_one_by_one(arch):
    model = tiny_model(arch, torch.float64)
    prompts = [random_ids(1, n, seed=n)[0] for n in (7, 13, 10)]
    longest = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = prompt
        attention_mask[row, longest - len(prompt) :] = 1
    settings = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    input_lengths = []  # tokens fed to each forward: generate must hand the cache back and feed one token
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: input_lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    batched = model.generate(input_ids, attention_mask=attention_mask, **settings)
    hook.remove()
    assert input_lengths == [longest] + [1] * 5
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], **settings)
        assert torch.equal(batched.sequences[row, longest:], alone.sequences[0, len(prompt) :])
        with torch.no_grad():  # and generation with the cache gives the logits of one full forward
            full = model(alone.sequences[:, :-1]).logits[0, len(prompt) - 1 :]
        # generate() returns float32 logits: the float64 ones rounded, within an ulp of each other.
        ulp = FLOAT32_EPS * full.abs().max().item()
        torch.testing.assert_close(torch.cat(alone.logits).double(), full, rtol=0, atol=ulp)
        for step_batched, step_alone in zip(batched.logits, alone.logits, strict=True):
            torch.testing.assert_close(step_batched[row], step_alone[0], rtol=0, atol=F64_ATOL)
    for entry in output_cache(batched).layers:
        if isinstance(entry, KVCacheEntry) and entry.window is not None:
            assert entry.get_seq_length() == WINDOW - 1


def test_cache_is_accepted_under_both_transformers_names():
    # generate() of transformers < 5.24 passes the cache as past_key_values, later releases as cache.
    model = tiny_model("deltanet-global", torch.float64)
    ids = random_ids(1, 9)
    with torch.no_grad():
        expected = model(ids).logits[:, -1]
        for name in ("cache", "past_key_values"):
            prefill = output_cache(model(ids[:, :8], use_cache=True))
            step = model(ids[:, 8:], **{name: prefill})
            torch.testing.assert_close(step.logits[:, -1], expected, rtol=0, atol=F64_ATOL)
            assert output_cache(step) is prefill and prefill.get_seq_length() == 9
        with pytest.raises(ValueError, match="not both"):
            model(ids[:, 8:], cache=prefill, past_key_values=prefill)


def test_left_padding_without_position_ids_counts_positions_from_real_tokens():
    # generate() passes position_ids; a plain forward must derive the same from the mask and the cache.
    model = tiny_model("deltanet-global", torch.float64)  # its attention layers make positions matter
    num_pad, tokens = 3, random_ids(1, 11)
    ids = torch.cat([torch.zeros(1, num_pad, dtype=torch.long), tokens[:, :9]], dim=1)
    attention_mask = torch.cat([torch.zeros(1, num_pad), torch.ones(1, 9)], dim=1).long()
    with torch.no_grad():
        out = model(ids, attention_mask=attention_mask, use_cache=True)
        logits = [out.logits[:, num_pad:]]
        for t in (9, 10):
            attention_mask = torch.cat([attention_mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
            out = model(tokens[:, t : t + 1], attention_mask=attention_mask, cache=output_cache(out))
            logits.append(out.logits)
        alone = model(tokens).logits
    torch.testing.assert_close(torch.cat(logits, dim=1), alone, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_documents_match_documents_one_by_one(arch):
    model = tiny_model(arch, torch.float64)
    lengths = [5, 1, 9, 3]
    documents = [random_ids(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    packed_ids = torch.cat(documents, dim=1)
    cu_seqlens = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    with torch.no_grad():
        packed = model(packed_ids, cu_seqlens=cu_seqlens, labels=packed_ids)
        alone = [model(doc, labels=doc) for doc in documents]
        # The same tokens as two rows of 9, documents marked by position_ids restarting at 0:
        # [doc0, doc1, first 3 of doc2] and [last 6 of doc2 (a document of its own here), doc3].
        position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
        rows = model(packed_ids.view(2, 9), position_ids=position_ids)
    expected_logits = torch.cat([out.logits for out in alone], dim=1)
    torch.testing.assert_close(packed.logits, expected_logits, rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(rows.logits[0, :6], expected_logits[0, :6], rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(rows.logits[0, 6:], alone[2].logits[0, :3], rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(rows.logits[1, 6:], alone[3].logits[0], rtol=0, atol=F64_ATOL)
    # Cross-document targets are dropped: the packed loss is the token-weighted mean of the documents'.
    num_targets = torch.tensor([n - 1 for n in lengths], dtype=torch.float64)
    no_loss = torch.zeros((), dtype=torch.float64)  # a 1-token document has no target
    document_losses = torch.stack(
        [out.loss if n > 1 else no_loss for out, n in zip(alone, lengths, strict=True)]
    )
    expected_loss = (document_losses * num_targets).sum() / num_targets.sum()
    torch.testing.assert_close(packed.loss, expected_loss, rtol=0, atol=F64_ATOL)


def test_loss_shifts_labels_and_skips_ignored_and_padding():
    model = tiny_model("deltanet-swa", torch.float64)
    ids = random_ids(2, 11)
    labels = ids.clone()
    labels[0, 4] = -100
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0  # left padding: its labels are no targets
    with torch.no_grad():
        out = model(ids, attention_mask=attention_mask, labels=labels)
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[0, 3] = False  # label position 4 predicted from position 3
    keep[1, :2] = False  # labels at padded positions 1, 2
    per_token = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
    )
    torch.testing.assert_close(out.loss, per_token[keep].mean(), rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_save_and_load_round_trip_gives_identical_logits(tmp_path, tie_word_embeddings):
    from transformers import AutoModelForCausalLM

    model = tiny_model("deltanet-swa", tie_word_embeddings=tie_word_embeddings, use_output_gate=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is DeltaNetForCausalLM
    saved_fields = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    assert {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"} == saved_fields
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie_word_embeddings
    ids = random_ids(2, 13)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_import_deltanet_registers_the_auto_classes():
    # A fresh interpreter, so that only `import deltanet` can have registered the model type.
    script = (
        "import deltanet\n"
        "from transformers import AutoConfig, AutoModel, AutoModelForCausalLM\n"
        "config = AutoConfig.for_model('deltanet', vocab_size=50, hidden_size=16, num_hidden_layers=2,"
        " num_heads=2, head_dim=8, intermediate_size=32)\n"
        "print(type(config).__name__, type(AutoModel.from_config(config)).__name__,"
        " type(AutoModelForCausalLM.from_config(config)).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DeltaNetConfig", "DeltaNetModel", "DeltaNetForCausalLM"]


def triton_import_error() -> str | None:
    try:
        import deltanet.ops.triton.chunk  # noqa: F401
    except ImportError as error:
        return f"backend 'triton' does not import: {error}"
    return None


def backend_device(backend: str) -> tuple[str | None, str | None]:
    """(device to test the backend on, None) or (None, why it cannot be tested here)."""
    if backend == "torch":
        return "cpu", None
    if (error := triton_import_error()) is not None:
        return None, error
    if torch.cuda.is_available():
        return "cuda", None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu", None  # the kernels run in Triton's interpreter
    return None, "backend 'triton' needs CUDA here; test_triton_kernels_in_the_interpreter runs it on the CPU"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_every_available_backend_matches_pytorch_path_loss_and_gradients(backend):
    device, reason = backend_device(backend)
    if reason is not None:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    # On a GPU both paths run as training does, under bf16 autocast (float32 products in the kernels
    # would be tf32 anyway); on the CPU in float32. chunk_size 16: the smallest the kernels tile by.
    precision = (
        (lambda: torch.autocast("cuda", torch.bfloat16)) if device == "cuda" else contextlib.nullcontext
    )
    ids = random_ids(2, 21)

    def loss_and_gradients(model, device, precision):
        model = model.to(device).train()
        with precision():
            loss = model(ids.to(device), labels=ids.to(device)).loss
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return loss.detach().double().cpu(), grads.double().cpu()

    def model_with(backend_name, dtype=torch.float32):
        # On the CPU the model is float32 throughout: full float32 products, to compare at float32 accuracy
        # (the kernels' tf32 error is tested in tests/test_triton.py).
        return tiny_model("deltanet-global", dtype, backend=backend_name, chunk_size=16,
                          allow_tf32=device == "cuda")

    reference64 = loss_and_gradients(model_with("torch", torch.float64), "cpu", contextlib.nullcontext)
    pytorch_path = loss_and_gradients(model_with("torch"), device, precision)
    tested = loss_and_gradients(model_with(backend), device, precision)  # the backend chosen by the config
    for index, factor in ((0, 2), (1, 3)):  # loss within 2x, gradients within 3x the PyTorch path's error
        error = (tested[index] - reference64[index]).abs().max().item()
        assert error <= low_precision_error_bound(reference64[index], pytorch_path[index], factor)
    if device == "cpu":  # the PyTorch path itself stays at float32 accuracy (~100 ulps, relative)
        relative = (pytorch_path[1] - reference64[1]).abs().max() / reference64[1].abs().max()
        assert relative.item() < 100 * FLOAT32_EPS


def test_triton_kernels_in_the_interpreter():
    reason = "CUDA is present: the Triton backend is tested on the GPU" if torch.cuda.is_available() else None
    if os.environ.get("TRITON_INTERPRET") == "1":  # conftest.py sets it on machines without CUDA
        reason = "TRITON_INTERPRET=1: the backend test above already ran the kernels in the interpreter"
    if (reason := reason or triton_import_error()) is not None:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    # TRITON_INTERPRET is read when kernels are defined, hence a fresh interpreter (~10 s).
    test_id = f"{__file__}::test_every_available_backend_matches_pytorch_path_loss_and_gradients[triton]"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_id],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:]


BAD_CONFIG_VALUES = [
    ("hidden_size", 0),
    ("num_heads", -1),
    ("head_dim", 512),
    ("num_hidden_layers", 2.5),
    ("conv_size", 0),
    ("mixer", "mamba"),
    ("attn_layers", [0, 4]),
    ("attn_layers", [1, 1]),
    ("attn_window", 0),
    ("norm_eps", 0.0),
    ("initializer_range", -0.1),
    ("chunk_size", 48),
    ("backend", "cuda"),
    ("use_short_conv", "yes"),
    ("intermediate_size", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIG_VALUES)
def test_bad_config_values_raise_errors_naming_the_field(field, value):
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_heads=2, head_dim=8)
    fields[field] = value
    with pytest.raises((ValueError, TypeError), match=f"DeltaNetConfig.{field} "):
        DeltaNetConfig(**fields)


def test_presets_follow_the_paper_and_reject_unknown_names():
    assert len(PRESET_NAMES) == 25 and {"deltanet-global-1.3b", "deltanet-mini", "linear-attn-small"} <= set(
        PRESET_NAMES)
    assert preset_config("deltanet-swa-small").attn_window == 512
    assert preset_config("deltanet-global-340m").attn_layers == [1, 12]
    assert preset_config("deltanet-global-debug", num_hidden_layers=8).attn_layers == [1, 4]
    swa = preset_config("deltanet-swa-1.3b")
    assert swa.attn_layers == list(range(1, 24, 2)) and swa.attn_window == 2048
    assert preset_config("transformer++-340m").mixer_types == ["attn"] * 24
    big = preset_config("deltanet-1.3b")
    assert (big.hidden_size, big.num_heads, big.head_dim, big.num_hidden_layers) == (2048, 16, 128, 24)
    with torch.device("meta"):  # sizes without allocating: 340M and 1.3B count one embedding matrix
        sizes = (("deltanet-340m", 341.6e6), ("deltanet-1.3b", 1300.1e6), ("deltanet-small", 27.5e6))
        for name, expected in sizes:
            model = DeltaNetForCausalLM(preset_config(name, tie_word_embeddings=True))
            assert abs(sum(p.numel() for p in model.parameters()) - expected) < 0.1e6
    with pytest.raises(ValueError, match="deltanet-swa-340m"):  # the error lists the valid names
        preset_config("deltanet-2b")
    with pytest.raises(ValueError, match="hiden_size"):
        preset_config("deltanet-debug", hiden_size=8)


def test_last_hidden_state_keeps_the_residual_dtype_under_autocast():
    """The block norms write bf16 under autocast (a projection follows); the final norm's output is returned
    to the user and keeps float32."""
    model = tiny_model("deltanet")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.model(input_ids=random_ids(1, 5), use_cache=False)
    assert out.last_hidden_state.dtype == torch.float32


@pytest.mark.parametrize("preset", ["deltanet-debug", "deltanet-swa-debug"])
def test_activation_checkpointing_gives_the_same_gradients(preset):
    """gradient_checkpointing recomputes each block in the backward: the same gradients, bit for bit (float64,
    packed documents), and Hugging Face's gradient_checkpointing_enable() turns it on."""
    torch.manual_seed(0)
    model = DeltaNetForCausalLM(preset_config(preset)).double()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(15), torch.arange(25)])[None].expand(2, -1)
    grads, calls = [], []
    block = model.model.layers[0]
    block_forward = block.forward  # counted by a wrapper: module hooks do not fire in the recomputation

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return block_forward(*args, **kwargs)

    block.forward = counting_forward
    for checkpointing in (False, True):
        model.model.gradient_checkpointing = checkpointing
        model.zero_grad()
        calls.clear()
        model(input_ids=ids, position_ids=positions, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward pass
    assert all(torch.equal(a, b) for a, b in zip(*grads)) and grads[0][0].abs().max() > 0
    model.model.gradient_checkpointing = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer transformers deprecate the name in favour of activation_...
        model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing


@pytest.mark.parametrize("arch", ["linear-attn", "transformer++"])
def test_max_seqlen_bounds_packed_documents(arch):
    """max_seqlen (a host-known bound of the packed documents' lengths, as the trainer passes) gives the same
    logits as reading the longest length from cu_seqlens; a bound below the longest is refused by name."""
    model = tiny_model(arch, torch.float64)
    ids = random_ids(1, 30)
    cu_seqlens = torch.tensor([0, 7, 19, 30])
    read = model(input_ids=ids, cu_seqlens=cu_seqlens, use_cache=False).logits
    bounded = model(input_ids=ids, cu_seqlens=cu_seqlens, max_seqlen=16, use_cache=False).logits
    torch.testing.assert_close(bounded, read, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="max_seqlen 11 is shorter than the longest packed document"):
        model(input_ids=ids, cu_seqlens=cu_seqlens, max_seqlen=11, use_cache=False)
