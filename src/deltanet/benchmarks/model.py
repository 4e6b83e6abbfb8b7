"""Training throughput and decoding cost of DeltaNet, its hybrids and its baselines, on one GPU. Writes
model.json, the tables, and a PNG per plotted section, with the card's name and the date. On a fresh H100 at
the 340m preset: sections train and decode (the default) about 5 minutes; sweep (the paper's Figure 4,
model_sweep.png) about 6 minutes (estimates: most of it is Triton and torch.compile building kernels).
`--device cpu --preset debug --shapes 1x64 --steps 1` is a smoke test.

Three sections, each side by side in one process on one device (`--sections train decode sweep`):

train   A training step (forward, backward, AdamW step; fused AdamW on CUDA) under bf16 autocast, float32
        weights, of this project's DeltaNet, its Transformer++ of the same size, and flash-linear-attention's
        DeltaNetForCausalLM with the same sizes and its default fusions (norms, SwiGLU, cross-entropy;
        `fla` is imported only if installed, never a dependency). Random tokens, labels = inputs.
        Tokens/s = B * T / the median step time over --steps timed steps after --warmup steps, each
        ended by a device synchronisation. Peak memory is torch.cuda.max_memory_allocated over the
        timed steps (weights, AdamW states and activations).
decode  Batch 1, bf16 weights: prefill a random prompt of each --contexts length once (the chunked op for
        DeltaNet, SDPA for Transformer++), then --decode-steps single-token steps with the cache, each
        synchronised; time per token is their median. Memory: the cache's bytes, and the peak allocated
        during the steps. DeltaNet's cache is constant in the context; Transformer++'s KV cache grows.
sweep   The paper's Figure 4: the training step of `train`, timed the same way, of DeltaNet, its two hybrids
        (deltanet-swa: sliding-window attention every other layer; deltanet-global: two global attention
        layers), Transformer++ and linear attention at the same preset size, at a fixed number of tokens
        per step: 8x2048, 4x4096, 2x8192, 1x16384 (16384 tokens). Tokens/s against T in model_sweep.png.
        Linear attention's chunked form is plain PyTorch (no kernel of its own), so its row measures that.

Model FLOPs per trained token (reported as TFLOP/s; deltanet.models.flops, the convention of nanoGPT's
estimate_mfu), d = heads * head_dim, C = chunk, D = head_dim:
    6 N                          N = parameters of the matrix products (all 2-D weights but the embedding)
    + 12 d c per attention layer c = keys a query sees on average: (T + 1) / 2 causal, about W in a window
    + 6 H (5 C D + 3 D^2) per DeltaNet layer (the chunked op's forward products, as in
                                 benchmarks/kernels.py; backward = 2 forwards)
    + 6 H (2 C D + 2 D^2) per linear-attention layer

Run on a GPU (progress lines show the seconds elapsed; the first steps of each model include compiling):
    deltanet bench model --out results/                      (train and decode)
    deltanet bench model --out results/ --sections sweep     (Figure 4)
Smoke test on a CPU:
    deltanet bench model --out /tmp/b --device cpu --preset debug --shapes 1x64 --steps 1 --sections sweep
(`python -m deltanet.benchmarks.model` takes the same options.)

Where it sits: a benchmark on top of deltanet.models; `deltanet bench model` (deltanet.cli) and
`python -m deltanet.benchmarks.model` both call add_arguments and run. Results: docs/benchmarks.md and
docs/models.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch

import deltanet
from deltanet.errors import UserError
from deltanet.models import DeltaNetConfig, DeltaNetForCausalLM, output_cache, preset_config
from deltanet.models.flops import training_flops_per_token
from deltanet.models.presets import ARCHITECTURES, SIZES

DEFAULT_SHAPES = ["8x2048", "1x16384"]
# The sweep (the paper's Figure 4): 16384 tokens per step at each length, every architecture of the presets.
SWEEP_SHAPES = ["8x2048", "4x4096", "2x8192", "1x16384"]
SWEEP_MODELS = ["deltanet", "deltanet-swa", "deltanet-global", "transformer++", "linear-attn"]
SECTIONS = ("train", "decode", "sweep")
CPU_SMOKE = "--device cpu --preset debug --shapes 1x64 --steps 1"
DEFAULT_CONTEXTS = [1024, 4096, 16384, 32768]
_START = time.perf_counter()


def progress(section: str, message: str) -> None:
    """A progress line with the seconds since import: the first steps include Triton compilation."""
    print(f"[{section} +{time.perf_counter() - _START:.0f}s] {message}", flush=True)


# --- helpers ----------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    """Return what the last model held to the device before the next one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def parse_shape(text: str) -> tuple[int, int]:
    """Batch x sequence length, "8x2048" -> (8, 2048); UserError for anything else."""
    try:
        batch, seq_len = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--shapes: {text!r} is not BxT (batch x sequence length, e.g. 8x2048)") from None
    if batch < 1 or seq_len < 1:
        raise UserError(f"--shapes: {text!r} needs a positive batch and length")
    return batch, seq_len


def random_tokens(batch: int, seq_len: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(vocab_size, (batch, seq_len), generator=generator).to(device)


def fla_model_class():
    """flash-linear-attention's (DeltaNetConfig, DeltaNetForCausalLM, version), or None if not importable."""
    try:
        import fla
        from fla.models import DeltaNetConfig as FlaDeltaNetConfig
        from fla.models import DeltaNetForCausalLM as FlaDeltaNetForCausalLM
    # Not only ImportError: an fla built for another torch or triton can fail in many ways on import.
    except Exception as error:  # noqa: BLE001
        print(
            f"flash-linear-attention not importable ({type(error).__name__}: {error}); left out", flush=True
        )
        return None
    return FlaDeltaNetConfig, FlaDeltaNetForCausalLM, getattr(fla, "__version__", "?")


def fla_config_like(fla_config_class, config: DeltaNetConfig):
    """fla's DeltaNet with our sizes: same heads (head_dim = hidden * expand_k / heads), MLP, vocab, conv,
    SiLU feature map, L2-normalised q and k, sigmoid beta, per-head RMSNorm output, no output gate."""
    if config.num_heads * config.head_dim != config.hidden_size:
        raise ValueError("fla's DeltaNet needs num_heads * head_dim == hidden_size (expand_k = expand_v = 1)")
    return fla_config_class(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_heads=config.num_heads,
        expand_k=1.0,
        expand_v=1.0,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        norm_eps=config.norm_eps,
        use_short_conv=config.use_short_conv,
        conv_size=config.conv_size,
        qk_activation="silu",
        qk_norm="l2",
        use_beta=True,
        use_gate=config.use_output_gate,
        allow_neg_eigval=config.allow_neg_eigval,
        tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range,
        use_cache=False,
    )


def model_builders(
    size: str, fla: tuple | None, compiled: bool = False, compile_mode: str = "default",
    architectures: tuple[str, ...] = ("deltanet", "transformer++"),
) -> dict:
    """name -> (our config for the FLOP formula, mixer kind, function building the model).

    fla: what `fla_model_class` returned, or None to leave flash-linear-attention out.
    compiled: also this project's models under torch.compile(fullgraph=True) (the delta-rule op is a
    registered custom op, so the whole model compiles as one graph; fla's ops break the graph).
    architectures: this project's models, by preset architecture (deltanet.models.presets.ARCHITECTURES).
    """
    deltanet_config = preset_config(f"deltanet-{size}")
    builders = {}
    for architecture in architectures:
        config = preset_config(f"{architecture}-{size}")
        builders[architecture] = (config, config.mixer, lambda config=config: DeltaNetForCausalLM(config))
    if compiled:
        for name in list(builders):
            config, mixer, build = builders[name]
            def build_compiled(build=build):
                # dynamic=False: one static graph per shape (the shapes are fixed, as in training);
                # otherwise the second shape recompiles with symbolic sizes.
                return torch.compile(build(), fullgraph=True, dynamic=False, mode=compile_mode)

            builders[f"{name} compiled"] = (config, mixer, build_compiled)
    if fla is not None:
        fla_config_class, fla_model, _ = fla
        fla_config = fla_config_like(fla_config_class, deltanet_config)
        builders["fla-deltanet"] = (deltanet_config, "deltanet", lambda: fla_model(fla_config))
    return builders


def build_on(device: torch.device, build) -> torch.nn.Module:
    with torch.device(device):  # initialise on the device: a 340M model's init on the CPU takes seconds
        return build()


# --- training ---------------------------------------------------------------------------------------------


def time_training(model, optimizer, ids, device: torch.device, warmup: int, steps: int):
    """Median seconds per step, peak memory and the last loss of `steps` timed steps after `warmup`."""

    def step() -> torch.Tensor:
        # Marks a new iteration for CUDA-graph trees (compile mode reduce-overhead); a no-op otherwise.
        torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(warmup):
        step()
    synchronize(device)
    reset_peak_memory(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_memory_gib(device), loss.item()


def launch_variant(name: str) -> tuple[str, list[str]]:
    """"deltanet compiled [wy.inverse=doubling; backward.saved=inputs]" -> ("deltanet compiled", [the two
    settings]): a row of the same model with Triton launch settings of its own (model.py's --launch syntax),
    so that variants are timed side by side in one process."""
    base, bracket, rest = name.partition(" [")
    if not bracket:
        return name, []
    return base, [part.strip() for part in rest.removesuffix("]").split(";") if part.strip()]


def apply_launch_settings(assignments: list[str]) -> None:
    """"KERNEL.KEY=VALUE" settings (main's --launch) into the Triton launch tables: common.LAUNCH, or
    qkv_features.LAUNCH for names prefixed "qkv_features."; "mixer.NAME=VALUE" sets a class-level switch of
    the recurrent mixers (MIXER_SWITCHES, e.g. mixer.fuse_extra_projections=False)."""
    from deltanet.ops.triton import qkv_features
    from deltanet.ops.triton.common import set_launch

    for assignment in assignments:
        if assignment.startswith("mixer."):
            set_mixer_switch(assignment.removeprefix("mixer."))
            continue
        table = qkv_features.LAUNCH if assignment.startswith("qkv_features.") else None
        set_launch(assignment.removeprefix("qkv_features."), table)


# Class attributes of LinearRecurrentMixer that a row may set (layer-level variants, timed side by side).
MIXER_SWITCHES = ("fuse_extra_projections", "fused_width_multiple")


def set_mixer_switch(assignment: str) -> None:
    """"NAME=VALUE" on LinearRecurrentMixer, VALUE a Python literal of the current value's type."""
    import ast

    from deltanet.layers.recurrent_mixer import LinearRecurrentMixer

    name, sep, text = assignment.partition("=")
    if not sep or name not in MIXER_SWITCHES:
        raise ValueError(f"mixer setting must be NAME=VALUE with NAME one of {', '.join(MIXER_SWITCHES)}, "
                         f"got {assignment!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    current = getattr(LinearRecurrentMixer, name)
    if type(value) is not type(current):
        raise ValueError(f"mixer.{name} takes a {type(current).__name__} (now {current!r}), got {text!r}")
    setattr(LinearRecurrentMixer, name, value)


class LaunchSettingError(ValueError):
    """A --launch setting (or a row's) that set_launch refused."""


@contextlib.contextmanager
def launch_settings(assignments: list[str]):
    """apply_launch_settings for the duration of the block, then the tables as they were; a refused setting
    raises LaunchSettingError."""
    if not assignments:
        yield
        return
    from deltanet.layers.recurrent_mixer import LinearRecurrentMixer
    from deltanet.ops.triton import qkv_features
    from deltanet.ops.triton.common import LAUNCH

    saved = [(table, {name: dict(cfg) for name, cfg in table.items()})
             for table in (LAUNCH, qkv_features.LAUNCH)]
    saved_switches = {name: getattr(LinearRecurrentMixer, name) for name in MIXER_SWITCHES}
    try:
        try:
            apply_launch_settings(assignments)
        except ValueError as error:
            raise LaunchSettingError(str(error)) from None
        yield
    finally:
        for table, copy in saved:
            table.clear()
            table.update(copy)
        for name, value in saved_switches.items():
            setattr(LinearRecurrentMixer, name, value)


def check_model_names(names, builders: dict, option: str = "--models") -> None:
    """UserError (naming `option`) for an unknown model or a bad row setting, before any row runs."""
    unknown = sorted({launch_variant(name)[0] for name in names or ()} - set(builders))
    if unknown:
        raise UserError(f"{option}: unknown {', '.join(unknown)}; this run has {', '.join(builders)}")
    for name in names or ():
        try:
            with launch_settings(launch_variant(name)[1]):
                pass
        except LaunchSettingError as error:
            raise UserError(f"{option}: {name!r}: {error}") from None


def run_training(size, shapes, device, warmup, steps, fla, compiled=False, only=None,
                 compile_mode="default", architectures=("deltanet", "transformer++"), option="--models",
                 section="train") -> list[dict]:
    """Time a training step of each model (all, or the names in `only`, in that order) at each shape.
    A name in `only` may carry launch settings of its own: "deltanet compiled [wy.inverse=doubling]".
    architectures: as in model_builders; option: the option named in the error for a bad name."""
    rows = []
    builders = model_builders(size, fla, compiled, compile_mode, architectures)
    check_model_names(only, builders, option)
    for name in only or list(builders):
        base, assignments = launch_variant(name)
        with launch_settings(assignments):
            rows.extend(train_rows(name, builders[base], size, shapes, device, warmup, steps, section))
    return rows


def train_rows(name, builder, size, shapes, device, warmup, steps, section="train") -> list[dict]:
    """run_training's rows for one model at each shape (section: the progress lines' label)."""
    rows = []
    config, mixer, build = builder
    progress(section, f"building {name} ({size})")
    model = build_on(device, build).train()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    for batch, seq_len in shapes:
        progress(section, f"{name} {batch}x{seq_len}: {warmup} warm-up + {steps} timed steps")
        row = dict(model=name, batch=batch, seq_len=seq_len, params=num_params)
        try:
            ids = random_tokens(batch, seq_len, config.vocab_size, device)
            step_s, peak_gib, loss = time_training(model, optimizer, ids, device, warmup, steps)
            tokens_per_s = batch * seq_len / step_s
            tflops = training_flops_per_token(model, config, seq_len) * tokens_per_s / 1e12
            row.update(
                step_s=step_s,
                tokens_per_s=tokens_per_s,
                peak_gib=peak_gib,
                loss=loss,
                model_tflops=tflops,
            )
            peak = "" if peak_gib is None else f", peak {peak_gib:.1f} GiB"
            progress(
                section, f"{name} {batch}x{seq_len}: {tokens_per_s:,.0f} tokens/s, loss {loss:.3f}{peak}"
            )
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            row.update(error="out of memory")
            progress(section, f"{name} {batch}x{seq_len}: out of memory")
        optimizer.zero_grad(set_to_none=True)
        ids = None
        free_memory(device)
        rows.append(row)
    del model, optimizer
    free_memory(device)
    return rows


# --- decoding ---------------------------------------------------------------------------------------------


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for entry in cache.layers for t in entry.tensors.values())


@torch.no_grad()
def time_decoding(model, context: int, vocab_size: int, device: torch.device, steps: int) -> dict:
    """Prefill `context` random tokens once, then `steps` greedy single-token steps with the cache."""
    prompt = random_tokens(1, context, vocab_size, device)
    synchronize(device)
    start = time.perf_counter()
    out = model(prompt, use_cache=True, logits_to_keep=1)
    synchronize(device)
    prefill_s = time.perf_counter() - start
    cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
    reset_peak_memory(device)
    times = []
    for _ in range(steps + 2):  # the first two steps are warm-up (allocator, kernel selection)
        start = time.perf_counter()
        out = model(token, cache=cache, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return dict(
        prefill_s=prefill_s,
        ms_per_token=1e3 * statistics.median(times[2:]),
        cache_mib=cache_bytes(cache) / 2**20,
        peak_gib=peak_memory_gib(device),
    )


def run_decoding(size, contexts, device, steps, budget_s) -> list[dict]:
    rows = []
    for name in ("deltanet", "transformer++"):
        config = preset_config(f"{name}-{size}")
        progress("decode", f"building {name} ({size}, bf16)")
        model = build_on(device, lambda config=config: DeltaNetForCausalLM(config))
        model = model.to(torch.bfloat16).eval()
        give_up = None  # once a context runs out of memory or time, longer ones are not tried
        for context in contexts:
            row = dict(model=name, context=context)
            if give_up is not None:
                row.update(error=give_up)
                rows.append(row)
                continue
            progress("decode", f"{name} context {context}: prefill + {steps} steps")
            start = time.perf_counter()
            try:
                row.update(time_decoding(model, context, config.vocab_size, device, steps))
                progress(
                    "decode",
                    f"{name} context {context}: {row['ms_per_token']:.2f} ms/token, "
                    f"cache {row['cache_mib']:.1f} MiB",
                )
                if time.perf_counter() - start > budget_s:
                    give_up = f"skipped: context {context} took over {budget_s:.0f} s"
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                row.update(error="out of memory")
                give_up = f"skipped: context {context} ran out of memory"
                progress("decode", f"{name} context {context}: out of memory")
            free_memory(device)
            rows.append(row)
        del model
        free_memory(device)
    return rows


# --- report -----------------------------------------------------------------------------------------------


def ratio(numerator: dict | None, denominator: dict | None, key: str) -> float | None:
    if not numerator or not denominator or key not in numerator or key not in denominator:
        return None
    return numerator[key] / denominator[key]


def training_ratios(rows: list[dict]) -> list[dict]:
    """Per shape: tokens/s of ours over fla's and over Transformer++'s (> 1: ours faster)."""
    by_shape: dict[tuple[int, int], dict[str, dict]] = {}
    for row in rows:
        by_shape.setdefault((row["batch"], row["seq_len"]), {})[row["model"]] = row
    return [
        dict(
            batch=batch,
            seq_len=seq_len,
            ours_over_fla=ratio(models.get("deltanet"), models.get("fla-deltanet"), "tokens_per_s"),
            ours_over_transformer=ratio(models.get("deltanet"), models.get("transformer++"), "tokens_per_s"),
            # Compiled: ours under torch.compile against fla as it runs (its ops break compiled graphs), and
            # against our Transformer++ compiled the same way.
            compiled_over_fla=ratio(
                models.get("deltanet compiled"), models.get("fla-deltanet"), "tokens_per_s"
            ),
            compiled_over_transformer=ratio(
                models.get("deltanet compiled"), models.get("transformer++ compiled"), "tokens_per_s"
            ),
        )
        for (batch, seq_len), models in by_shape.items()
    ]


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(result: dict) -> None:
    print(
        f"\n# {result['device']}, {result['date']}, preset size {result['size']}, torch {result['torch']}, "
        f"transformers {result['transformers']}, fla {result['fla'] or 'not installed'}"
    )
    if result.get("train"):
        print(f"\n{'model':<24} {'shape':>8} {'params M':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'peak GiB':>9}")
        for row in result["train"]:
            shape = f"{row['batch']}x{row['seq_len']}"
            if "error" in row:
                print(f"{row['model']:<24} {shape:>8} {row['params'] / 1e6:>9.1f} {row['error']:>10}")
                continue
            print(
                f"{row['model']:<24} {shape:>8} {row['params'] / 1e6:>9.1f} {row['tokens_per_s']:>10,.0f} "
                f"{row['model_tflops']:>8.1f} {fmt(row['peak_gib'], '.1f'):>9}"
            )
        print(
            f"\n{'shape':>8} {'ours/fla':>9} {'ours/T++':>9} {'comp/fla':>9} {'comp/T++c':>9}   (tokens/s "
            "ratios, eager and compiled; issue 4's bar on one H100 at 340M: ours/fla >= 1.1; ours/T++ >= 1 "
            "at 8x2048, > 1 at 1x16384)"
        )
        for row in result["train_ratios"]:
            print(
                f"{row['batch']}x{row['seq_len']:<6} {fmt(row['ours_over_fla'], '.2f'):>9} "
                f"{fmt(row['ours_over_transformer'], '.2f'):>9} "
                f"{fmt(row.get('compiled_over_fla'), '.2f'):>9} "
                f"{fmt(row.get('compiled_over_transformer'), '.2f'):>9}"
            )
    if result.get("sweep"):
        print_sweep(result["sweep"])
    if result.get("decode"):
        header = f"{'model':<14} {'context':>8} {'ms/token':>9} {'cache MiB':>10} {'peak GiB':>9}"
        print(f"\n{header} {'prefill s':>10}")
        for row in result["decode"]:
            if "error" in row:
                print(f"{row['model']:<14} {row['context']:>8} {row['error']}")
                continue
            print(
                f"{row['model']:<14} {row['context']:>8} {row['ms_per_token']:>9.2f} "
                f"{row['cache_mib']:>10.1f} {fmt(row['peak_gib'], '.2f'):>9} {row['prefill_s']:>10.2f}"
            )


def plot_decoding(rows: list[dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({row["model"] for row in rows}):
        points = [row for row in rows if row["model"] == name and "error" not in row]
        contexts = [row["context"] for row in points]
        time_ax.plot(contexts, [row["ms_per_token"] for row in points], marker="o", label=name)
        memory_ax.plot(contexts, [row["cache_mib"] for row in points], marker="o", label=name)
    for axis, label in ((time_ax, "ms per generated token (batch 1)"), (memory_ax, "cache MiB")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("context (prompt tokens)")
        axis.set_ylabel(label)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_sweep(rows: list[dict]) -> None:
    """Tokens/s of each model (rows) at each shape (columns): the numbers of the Figure 4 plot."""
    shapes = list(dict.fromkeys((row["batch"], row["seq_len"]) for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    cells = {(row["model"], row["batch"], row["seq_len"]): row for row in rows}
    print("\n# sweep: training tokens/s (model TFLOP/s, peak GiB in model.json)")
    print(f"{'model':<24}" + "".join(f"{f'{batch}x{seq_len}':>12}" for batch, seq_len in shapes))
    for model in models:
        line = f"{model:<24}"
        for batch, seq_len in shapes:
            row = cells.get((model, batch, seq_len), {})
            line += f"{fmt(row.get('tokens_per_s'), ',.0f') if 'error' not in row else 'OOM':>12}"
        print(line)


def plot_sweep(rows: list[dict], title: str, path: str) -> bool:
    """The paper's Figure 4: training tokens/s against T, one line per model. False if nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if "error" not in row]
    if not rows:
        return False
    seq_lens = sorted({row["seq_len"] for row in rows})
    fig, axis = plt.subplots(figsize=(6.5, 4.5))
    for name in dict.fromkeys(row["model"] for row in rows):
        points = sorted((row["seq_len"], row["tokens_per_s"]) for row in rows if row["model"] == name)
        axis.plot([p[0] for p in points], [p[1] / 1e3 for p in points], marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_xticks(seq_lens, [str(seq_len) for seq_len in seq_lens])
    axis.set_ylim(bottom=0)
    axis.set_xlabel("training length T (sequence length)")
    axis.set_ylabel("training throughput, thousand tokens/s")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_results"),
                        help="folder for model.json, model_decode.png and model_sweep.png "
                        "(default: $OUT, else bench_results)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test (default: cuda)")
    parser.add_argument("--preset", "--size", dest="size", default="340m", choices=sorted(SIZES),
                        help="model size of the presets deltanet-SIZE, transformer++-SIZE, ... "
                        "(default: 340m)")
    parser.add_argument("--sections", nargs="+", default=["train", "decode"], choices=SECTIONS,
                        help="train (one training step, ours against fla and Transformer++), decode, sweep "
                        "(the paper's Figure 4: tokens/s against T) (default: train decode)")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="BxT",
                        help="training batch x length of the train and sweep sections (default: train "
                        f"{' '.join(DEFAULT_SHAPES)}; sweep {' '.join(SWEEP_SHAPES)}, 16384 tokens per step)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per shape (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first (default: 3)")
    parser.add_argument("--no-fla", action="store_true",
                        help="train: leave flash-linear-attention out even if installed "
                        "(default: in if installed)")
    parser.add_argument("--contexts", type=int, nargs="+", default=DEFAULT_CONTEXTS, metavar="T",
                        help=f"decoding prompt lengths (default: {' '.join(map(str, DEFAULT_CONTEXTS))})")
    parser.add_argument("--compile", action="store_true",
                        help="train: also time this project's models under torch.compile(fullgraph=True); in "
                        "sweep, makes '... compiled' names available to --sweep-models (default: off)")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="train: only these rows, in this order (deltanet, transformer++, their '... "
                        "compiled' forms with --compile, fla-deltanet) (default: all)")
    parser.add_argument("--sweep-models", nargs="+", default=SWEEP_MODELS, metavar="NAME",
                        help=f"sweep: these rows, in this order: architectures of the presets "
                        f"({', '.join(ARCHITECTURES)}), '... compiled' with --compile, fla-deltanet "
                        f"(default: {' '.join(SWEEP_MODELS)})")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode of the compiled rows (reduce-overhead: CUDA graphs) "
                        "(default: default)")
    parser.add_argument(
        "--launch", action="append", default=[], metavar="KERNEL.KEY=VALUE",
        help="override a Triton launch setting for every row (repeatable; the tables are LAUNCH in "
        "deltanet.ops.triton.common and, prefixed qkv_features., in deltanet.ops.triton.qkv_features; "
        "prefixed mixer., a switch of the recurrent mixers: fuse_extra_projections, fused_width_multiple), "
        "e.g. backward.saved=intermediates, wy.inverse=blocks16, qkv_features.bwd.dz_dtype=input, "
        "mixer.fused_width_multiple=64 (default: none)",
    )
    parser.add_argument("--decode-steps", type=int, default=32,
                        help="timed decoding steps per context (default: 32)")
    parser.add_argument("--decode-budget-s", type=float, default=60.0,
                        help="a model whose context took longer skips the longer ones (default: 60)")


def check_arguments(args: argparse.Namespace) -> torch.device:
    """The device, after checking what argparse cannot; UserError names the option at fault."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device (cuda or cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"no CUDA device here: the model benchmark times GPU training; for a CPU smoke test: "
                        f"deltanet bench model {CPU_SMOKE} [--sections ...]")
    for name, least in (("steps", 1), ("warmup", 0), ("decode_steps", 1)):
        if getattr(args, name) < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    if any(context < 1 for context in args.contexts):
        raise UserError(f"--contexts must be positive, got {args.contexts}")
    for text in args.shapes or ():
        parse_shape(text)
    return device


def run(args: argparse.Namespace) -> int:
    """`deltanet bench model`: the sections, then model.json, the plots and the tables."""
    device = check_arguments(args)
    try:
        with launch_settings(args.launch):  # the tables as they were afterwards (run may be called again)
            if args.launch:
                from deltanet.ops.triton import qkv_features
                from deltanet.ops.triton.common import LAUNCH

                print(f"# launch settings: {LAUNCH}, qkv_features {qkv_features.LAUNCH}", flush=True)
            run_benchmarks(args, device)
    except LaunchSettingError as error:
        raise UserError(f"--launch: {error}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m deltanet.benchmarks.model`, the same as `deltanet bench model`."""
    from deltanet.benchmarks.entry import module_main

    return module_main("python -m deltanet.benchmarks.model", __doc__, add_arguments, run, argv)


def json_arguments(args: argparse.Namespace) -> dict:
    """The options as JSON values (the command line's namespace also holds the command's function)."""
    return {name: value for name, value in vars(args).items()
            if isinstance(value, (str, int, float, bool, list, type(None)))}


def run_benchmarks(args, device: torch.device | None = None) -> dict:
    """run's work, on parsed arguments: the sections, model.json, the plots, the tables."""
    device = device or torch.device(args.device)
    fla = None
    if device.type != "cuda" and not args.no_fla:
        print("flash-linear-attention left out: its kernels need a GPU", flush=True)
    elif not args.no_fla:
        fla = fla_model_class()
    # Refuse a bad row name or row setting before any section runs.
    if "train" in args.sections:
        check_model_names(args.models, model_builders(args.size, fla, args.compile, args.compile_mode))
    if "sweep" in args.sections:
        check_model_names(args.sweep_models, model_builders(args.size, fla, args.compile, args.compile_mode,
                                                            tuple(ARCHITECTURES)), "--sweep-models")
    os.makedirs(args.out, exist_ok=True)  # before the minutes of measuring: a bad --out fails now
    import transformers

    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        date=str(datetime.date.today()),
        size=args.size,
        deltanet=deltanet.__version__,
        torch=torch.__version__,
        transformers=transformers.__version__,
        fla=fla[2] if fla else None,
        args=json_arguments(args),
    )
    print(f"# model benchmark on {result['device']}: sections {' '.join(args.sections)}", flush=True)
    if "train" in args.sections:
        shapes = [parse_shape(shape) for shape in args.shapes or DEFAULT_SHAPES]
        result["train"] = run_training(args.size, shapes, device, args.warmup, args.steps, fla, args.compile,
                                       args.models, args.compile_mode)
        result["train_ratios"] = training_ratios(result["train"])
    if "sweep" in args.sections:
        shapes = [parse_shape(shape) for shape in args.shapes or SWEEP_SHAPES]
        result["sweep"] = run_training(args.size, shapes, device, args.warmup, args.steps, fla, args.compile,
                                       args.sweep_models, args.compile_mode, tuple(ARCHITECTURES),
                                       "--sweep-models", "sweep")
    if "decode" in args.sections:
        result["decode"] = run_decoding(
            args.size, args.contexts, device, args.decode_steps, args.decode_budget_s
        )

    with open(os.path.join(args.out, "model.json"), "w") as file:
        json.dump(result, file, indent=1)
    print(f"\nwrote {os.path.join(args.out, 'model.json')}", flush=True)
    try:
        if result.get("decode"):
            path = os.path.join(args.out, "model_decode.png")
            plot_decoding(result["decode"], f"{result['device']}, {result['date']}", path)
            print(f"wrote {path}", flush=True)
        if result.get("sweep"):
            tokens = sorted({row["batch"] * row["seq_len"] for row in result["sweep"]})
            per_step = f"{tokens[0]} tokens per step" if len(tokens) == 1 else "tokens per step vary"
            title = (f"{result['device']}, {result['date']}: training, preset {args.size}, {per_step}, "
                     f"bf16 autocast")
            path = os.path.join(args.out, "model_sweep.png")
            if plot_sweep(result["sweep"], title, path):
                print(f"wrote {path}", flush=True)
    except ImportError:
        print("matplotlib not importable (pip install 'deltanet[bench]'): no plot", flush=True)
    print_tables(result)
    return result


if __name__ == "__main__":
    sys.exit(main())
