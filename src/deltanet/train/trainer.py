"""The training loop of `deltanet train`: one process, or several under torchrun (DDP), losing nothing.

A step takes `batch_size` packed rows (the global batch, whatever the number of processes: each process takes
its slice and accumulates gradients over micro-batches), minimises the next-token loss averaged over every
target of the global batch (so that 1 and N processes compute the same gradient), clips the gradient norm, and
steps AdamW and the warm-up/cosine schedule. Losses are checked for NaN/Inf at every log line and before every
checkpoint: a bad one stops the run naming its step, and no checkpoint is written after it.

Checkpoints (deltanet.train.checkpoint) hold the model, optimizer, schedule, RNG and data position: a run
killed at any moment continues with `--resume` from its latest one, with the same steps and, on the CPU, the
same losses as if it had not been stopped. SIGTERM or Ctrl-C write a checkpoint at the end of the current step
and stop.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from deltanet.models import DeltaNetConfig, DeltaNetForCausalLM, preset_config
from deltanet.models.flops import training_flops_per_token
from deltanet.ops.host_offsets import remember_host_offsets
from deltanet.train.checkpoint import (
    list_checkpoints,
    load_trainer_state,
    remove_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from deltanet.train.config import RESUMABLE_CHANGES, TrainConfig
from deltanet.train.corpus import open_corpus
from deltanet.train.errors import ConfigError, TrainError
from deltanet.train.metrics import MetricsLog
from deltanet.train.packing import PackedRows
from deltanet.train.schedule import warmup_cosine
from deltanet.train.tokenizers import load_tokenizer

# Dense bf16 tensor-core peaks for the MFU figure (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# The fields DeltaNetConfig adds to transformers' PretrainedConfig: what a checkpoint's model must match.
ARCHITECTURE_FIELDS = tuple(DeltaNetConfig.__annotations__)


@dataclass
class Processes:
    """Where this process stands: rank among world_size (1 without torchrun), its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_processes(config: TrainConfig) -> Processes:
    """The device, and the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on the
    CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} asked for, but CUDA is not available on this machine")
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world_size, device)


def build_model_config(config: TrainConfig, tokenizer) -> Any:
    """The DeltaNetConfig of the run: the preset, model_config's fields, vocab_size from the tokenizer."""
    overrides = dict(config.model_config)
    vocab_size = overrides.setdefault("vocab_size", tokenizer.vocab_size)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # bytes have none: samples run to the end
        overrides.setdefault(name, getattr(tokenizer, name, None))
    if not isinstance(vocab_size, int) or vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"the tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens, more than "
                          f"model_config vocab_size={vocab_size!r} can embed")
    try:
        return preset_config(config.model, **overrides)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model {config.model!r}: {str(error).splitlines()[0]}") from None


def describe_differences(before: dict[str, Any], now: dict[str, Any], ignore=frozenset()) -> list[str]:
    keys = sorted((set(before) | set(now)) - set(ignore))
    return [f"{key} {before.get(key)!r} there, {now.get(key)!r} now" for key in keys
            if before.get(key) != now.get(key)]


def load_model_weights(model: DeltaNetForCausalLM, folder: Path) -> None:
    """The checkpoint's model.safetensors into model (weights saved once when tied are tied again)."""
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise TrainError(f"checkpoint {folder} does not fit the model: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")
    if model.config.tie_word_embeddings:
        model.tie_weights()


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on the matrices of the blocks and head only (not norms, biases, embeddings)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.dim() >= 2 and "embed" not in name else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.adam_betas),
                             fused=device.type == "cuda")


def flatten_rows(input_ids: torch.Tensor, position_ids: torch.Tensor):
    """Packed rows [m, T] -> one row [1, m T] and its document offsets cu_seqlens int64 [N + 1] (every row
    starts a document, as do positions 0), computed here on the host: the model and its ops then need not
    read them back from the GPU, which would stall the queue of launched kernels once per step."""
    m, seq_len = input_ids.shape
    starts = position_ids.reshape(-1) == 0
    starts[::seq_len] = True
    total = torch.tensor([m * seq_len])
    cu_seqlens = torch.cat([starts.nonzero().flatten(), total])
    return input_ids.reshape(1, -1), position_ids.reshape(1, -1), cu_seqlens


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on device; from pinned memory to a GPU, so that the copy does not wait for the GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def counted_targets(position_ids: torch.Tensor) -> int:
    """Targets the loss counts in rows with these positions: each token but the first predicts the next, and a
    document's first token (position 0) is not predicted from the previous document."""
    return int((position_ids[:, 1:] != 0).sum())


@torch.no_grad()
def evaluate(model: DeltaNetForCausalLM, input_ids: torch.Tensor, position_ids: torch.Tensor,
             token_bytes: torch.Tensor, micro_batch: int, device: torch.device, autocast) -> dict[str, float]:
    """Held-out loss (nats per target token) and bits per byte (the targets' UTF-8 bytes) of rows [N, T]."""
    was_training = model.training
    model.eval()
    nll_sum, targets, num_bytes = 0.0, 0, 0
    for start in range(0, input_ids.shape[0], micro_batch):
        ids = input_ids[start:start + micro_batch].to(device)
        positions = position_ids[start:start + micro_batch].to(device)
        with autocast():
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        target = ids[:, 1:]
        counted = positions[:, 1:] != 0
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), reduction="none")
        nll_sum += float((nll.view_as(target) * counted).sum())
        targets += int(counted.sum())
        num_bytes += int((token_bytes.to(device)[target] * counted).sum())
    model.train(was_training)
    loss = nll_sum / max(targets, 1)
    return {"loss": loss, "bits_per_byte": nll_sum / math.log(2) / max(num_bytes, 1), "targets": targets}


class StopRequest:
    """SIGTERM / Ctrl-C ask the loop to checkpoint at the end of the current step and stop; a second Ctrl-C
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = {}

    def __enter__(self) -> StopRequest:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def train(config: TrainConfig, stdout=None) -> dict[str, Any]:
    """Run (or resume) the training the config describes; -> a summary (steps, tokens, losses, bits per byte,
    throughput, final checkpoint). User errors raise TrainError subclasses with one-line messages."""
    stdout = stdout or sys.stdout
    procs = start_processes(config)
    try:
        return _train(config, procs, stdout)
    finally:
        if procs.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, procs: Processes, stdout) -> dict[str, Any]:
    say = (lambda text: print(text, file=stdout, flush=True)) if procs.is_main else (lambda text: None)
    device, world = procs.device, procs.world_size
    if config.batch_size % world:
        raise ConfigError(f"batch_size={config.batch_size} must be a multiple of the number of processes "
                          f"({world})")
    rows_per_process = config.batch_size // world
    micro_batch = config.micro_batch_size or rows_per_process
    if rows_per_process % micro_batch:
        raise ConfigError(f"micro_batch_size={micro_batch} must divide the rows per process "
                          f"(batch_size {config.batch_size} / {world} processes = {rows_per_process})")
    accumulation = rows_per_process // micro_batch
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    out_dir = Path(config.out_dir)
    checkpoints = list_checkpoints(out_dir)
    if checkpoints and not config.resume:
        raise TrainError(f"{out_dir} already holds checkpoints (latest: step {checkpoints[-1][0]}); pass "
                         f"--resume to continue that run, or choose another --out-dir")
    if procs.is_main:
        remove_temporaries(out_dir)

    tokenizer = load_tokenizer(config.tokenizer)
    corpus = open_corpus(config.data, text_field=config.text_field, valid_percent=config.valid_percent)
    model_config = build_model_config(config, tokenizer)
    torch.manual_seed(config.seed)
    model = DeltaNetForCausalLM(model_config)

    start_step, trainer_state, data_state = 0, None, None
    if config.resume and checkpoints:
        start_step, folder = checkpoints[-1]
        trainer_state, data_state, saved = load_trainer_state(folder)
        changed = describe_differences(saved, config.to_dict(), ignore=RESUMABLE_CHANGES)
        if changed:
            raise TrainError(f"--resume: {folder} was written with other settings: {'; '.join(changed)}")
        saved_model = DeltaNetConfig.from_pretrained(folder)
        changed = describe_differences({k: getattr(saved_model, k) for k in ARCHITECTURE_FIELDS},
                                       {k: getattr(model_config, k) for k in ARCHITECTURE_FIELDS})
        if changed:
            raise TrainError(f"--resume: {folder} holds a different model configuration: "
                             f"{'; '.join(changed)}")
        load_model_weights(model, folder)
    elif config.resume:
        say(f"--resume: no checkpoint in {out_dir}; starting a new run")
    if start_step >= config.steps:
        raise TrainError(f"--resume: the checkpoint is at step {start_step}, and steps={config.steps}; raise "
                         f"--steps to train further")

    model.to(device).train()
    if config.activation_checkpointing:
        model.model.gradient_checkpointing = True
    optimizer = make_optimizer(model, config, device)
    warmup = config.resolved_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda index: warmup_cosine(index + 1, config.steps, warmup, config.min_lr_ratio))
    train_rows = PackedRows(corpus, tokenizer, "train", config.seq_len, seed=config.seed, shuffle=True)
    window = {"loss_sum": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
    tokens_seen, seconds_trained = 0, 0.0
    if trainer_state is not None:
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        set_rng_state(trainer_state["rng"])
        train_rows.load_state_dict(data_state)
        window = dict(trainer_state["window"])
        tokens_seen, seconds_trained = trainer_state["tokens_seen"], trainer_state["seconds_trained"]

    valid = None
    if config.valid_percent > 0:
        valid_rows = PackedRows(corpus, tokenizer, "valid", config.seq_len, seed=config.seed, shuffle=False)
        valid = valid_rows.next_rows(config.eval_rows)
    token_bytes = torch.tensor(tokenizer.token_byte_lengths() + [0] * (model_config.vocab_size
                                                                        - tokenizer.vocab_size))

    forward_model: torch.nn.Module = model
    if world > 1:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        # not fullgraph: packed rows find their document starts with a data-dependent nonzero()
        forward_model = torch.compile(forward_model, mode=config.compile_mode, dynamic=False)
    no_sync = forward_model.no_sync if world > 1 else contextlib.nullcontext

    params = sum(p.numel() for p in model.parameters())
    flops_per_token = training_flops_per_token(model, model_config, config.seq_len)
    tokens_per_step = config.batch_size * config.seq_len
    say(f"deltanet train: {config.model} ({params / 1e6:.2f}M parameters, vocab {model_config.vocab_size}) "
        f"on "
        f"{world} x {device.type}{' (bf16 autocast)' if use_bf16 else ''}; {corpus.description}: "
        f"{corpus.num_units('train')} train / {corpus.num_units('valid')} held-out units; "
        f"{config.batch_size} x {config.seq_len} tokens per step"
        + (f" ({accumulation} micro-batches of {micro_batch} per process)" if accumulation > 1 else "")
        + f"; steps {start_step + 1}..{config.steps}; output {out_dir}")
    metrics = MetricsLog(out_dir, start_step, config.tensorboard, enabled=procs.is_main)
    if metrics.tensorboard_note:
        say(metrics.tensorboard_note)

    pending: list[tuple[int, torch.Tensor]] = []  # (step, global mean loss) not yet checked for NaN/Inf
    last_checkpoint = checkpoints[-1][1] if checkpoints and config.resume else None
    last_valid: dict[str, float] | None = None

    def check_losses() -> None:
        """Sync the pending losses; a NaN/Inf stops the run with its step (no checkpoint after it)."""
        if not pending:
            return
        values = torch.stack([loss for _, loss in pending]).tolist()
        for (step, _), value in zip(pending, values):
            if not math.isfinite(value):
                kept = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint"
                raise TrainError(f"loss is {value} at step {step}: training stopped ({kept}); lower --lr or "
                                 f"check the data")
            window["loss_sum"] += value
            window["steps"] += 1
        pending.clear()

    def write_checkpoint(step: int) -> Path | None:
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng_state(), "window": dict(window), "tokens_seen": tokens_seen,
                 "seconds_trained": seconds_trained}
        folder = None
        if procs.is_main:
            folder = save_checkpoint(out_dir, step, model, state, train_rows.state_dict(), config.to_dict(),
                                     config.keep_checkpoints)
        if world > 1:
            dist.barrier()
        return folder

    def run_eval(step: int) -> None:
        nonlocal last_valid
        if valid is None:
            return
        last_valid = evaluate(model, valid[0], valid[1], token_bytes, micro_batch, device, autocast)
        loss, bits = last_valid["loss"], last_valid["bits_per_byte"]
        metrics.write(step, "valid", {"loss": loss, "bits_per_byte": bits})
        line = f"step {step}: held-out loss {loss:.4f}, {bits:.4f} bits per byte"
        bar.write(line) if bar is not None else say(line)

    bar = None
    if procs.is_main and config.progress:
        bar = tqdm(total=config.steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                   desc="train")
    stop_flag = torch.zeros(1, device=device)
    step = start_step
    interrupted = False
    with StopRequest() as stop:
        try:
            tick = time.perf_counter()
            for step in range(start_step + 1, config.steps + 1):
                input_ids, position_ids = train_rows.next_rows(config.batch_size)
                total_targets = counted_targets(position_ids)
                mine = slice(procs.rank * rows_per_process, (procs.rank + 1) * rows_per_process)
                input_ids, position_ids = input_ids[mine], position_ids[mine]
                loss_sum = torch.zeros((), device=device)
                for index in range(accumulation):
                    rows = slice(index * micro_batch, (index + 1) * micro_batch)
                    targets = counted_targets(position_ids[rows])
                    flat = flatten_rows(input_ids[rows], position_ids[rows])
                    ids, positions, cu_seqlens = (to_device(t, device) for t in flat)
                    remember_host_offsets(cu_seqlens, flat[2].tolist())
                    sync = contextlib.nullcontext() if index == accumulation - 1 else no_sync()
                    with sync:
                        with autocast():
                            output = forward_model(input_ids=ids, position_ids=positions,
                                                   cu_seqlens=cu_seqlens, labels=ids, use_cache=False)
                        if targets:
                            # the mean over this micro-batch's targets, re-weighted to the global batch's
                            # mean; DDP averages over processes, hence the factor world
                            scaled = output.loss * (targets * world / max(total_targets, 1))
                            loss_sum += output.loss.detach().float() * targets
                        else:  # no target here (rows of one-token documents): a zero gradient
                            scaled = output.logits.sum() * 0.0
                        scaled.backward()
                if config.grad_clip > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                else:
                    grad_norm = torch.zeros(())
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if world > 1:
                    dist.all_reduce(loss_sum)
                pending.append((step, loss_sum / max(total_targets, 1)))
                tokens_seen += tokens_per_step
                window["tokens"] += tokens_per_step
                if bar is not None:
                    bar.update(1)
                if world > 1:
                    stop_flag.fill_(float(stop.requested))
                    dist.all_reduce(stop_flag)
                    stop.requested = bool(stop_flag.item())
                last = step == config.steps
                if step % config.log_interval == 0 or last or stop.requested:
                    check_losses()
                    now = time.perf_counter()
                    window["seconds"] += now - tick
                    seconds_trained += now - tick
                    tick = now
                    values = {"loss": window["loss_sum"] / max(window["steps"], 1),
                              "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                              "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                              "tokens": tokens_seen}
                    metrics.write(step, "train", values)
                    if bar is not None:
                        bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_s']:,.0f}",
                                        refresh=False)
                    elif procs.is_main:
                        say(f"step {step}: loss {values['loss']:.4f}, lr {values['lr']:.2e}, "
                            f"{values['tokens_per_s']:,.0f} tokens/s")
                    window.update(loss_sum=0.0, steps=0, tokens=0, seconds=0.0)
                if (config.eval_interval and step % config.eval_interval == 0) or last:
                    run_eval(step)
                    tick = time.perf_counter()
                if step % config.checkpoint_interval == 0 or last or stop.requested:
                    check_losses()
                    last_checkpoint = write_checkpoint(step) or last_checkpoint
                    tick = time.perf_counter()
                if stop.requested:
                    interrupted = not last
                    break
        finally:
            if bar is not None:
                bar.close()
            metrics.close()
    if interrupted:
        say(f"stopped at step {step} of {config.steps}: checkpoint {last_checkpoint}; continue with --resume")
        return {"interrupted": True, "step": step, "checkpoint": str(last_checkpoint)}
    tokens_per_s = tokens_seen / max(seconds_trained, 1e-9)
    summary = {"interrupted": False, "step": config.steps, "tokens": tokens_seen, "seconds": seconds_trained,
               "tokens_per_s": tokens_per_s, "model_tflops": flops_per_token * tokens_per_s / 1e12,
               "checkpoint": str(last_checkpoint), "parameters": params}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
        if peak:
            summary["mfu"] = flops_per_token * tokens_per_s / (peak * world)
    if last_valid is not None:
        summary.update(valid_loss=last_valid["loss"], valid_bits_per_byte=last_valid["bits_per_byte"])
    say(f"done: {config.steps} steps, {tokens_seen:,} tokens in {seconds_trained:.0f} s "
        f"({tokens_per_s:,.0f} tokens/s, {summary['model_tflops']:.2f} model TFLOP/s"
        + (f", MFU {summary['mfu']:.1%}" if "mfu" in summary else "") + ")")
    if last_valid is not None:
        say(f"held-out: loss {last_valid['loss']:.4f} nats per token, {last_valid['bits_per_byte']:.4f} bits "
            f"per byte")
    say(f"model: {last_checkpoint} (DeltaNetForCausalLM.from_pretrained loads it)")
    if config.sample_tokens and procs.is_main:
        summary["sample"] = generate_sample(model, tokenizer, config, device, autocast)
        say(f"sample ({config.sample_tokens} tokens after {config.sample_prompt!r}):\n"
            f"{config.sample_prompt}{summary['sample']}")
    return summary


@torch.no_grad()
def generate_sample(model, tokenizer, config: TrainConfig, device: torch.device, autocast) -> str:
    """Text sampled from the model after the prompt (temperature 0.8, top-p 0.95, seeded)."""
    prompt = tokenizer.encode(config.sample_prompt) or [0]
    model.eval()
    generator_state = torch.get_rng_state()
    torch.manual_seed(config.seed)
    ids = torch.tensor([prompt], device=device)
    with autocast():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=config.sample_tokens,
                             do_sample=True, temperature=0.8, top_p=0.95, top_k=0, pad_token_id=0)
    torch.set_rng_state(generator_state)
    return tokenizer.decode(out[0, len(prompt):].tolist())
