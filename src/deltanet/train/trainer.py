"""The training loop of `deltanet train`: one process, or several under torchrun (DDP), losing nothing.

A step takes `batch_size` packed rows (the global batch, whatever the number of processes: each process takes
its slice and accumulates gradients over micro-batches), minimises the next-token loss averaged over every
target of the global batch (so that 1 and N processes compute the same gradient), clips the gradient norm, and
steps AdamW and the warm-up/cosine schedule. Losses and gradient norms are checked for NaN/Inf at every log
line and before every checkpoint: a bad one stops the run naming its step, and no checkpoint is written after
it.

Checkpoints (deltanet.train.checkpoint) hold the model, optimizer, schedule, RNG, data position and the
partial metrics window: a run killed at any moment continues with `--resume` from its latest checkpoint,
with the same steps and, on the CPU, the same losses as if it had not been stopped. SIGTERM or Ctrl-C write a
checkpoint at the end of the current step and stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
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
from deltanet.train.evaluation import (
    bits_per_byte,
    counted_targets_mask,
    generate_sample,
    held_out_nll,
    target_bytes,
)
from deltanet.train.metrics import MetricsLog
from deltanet.train.packing import PackedRows
from deltanet.train.processes import Processes, start_processes
from deltanet.train.schedule import warmup_cosine
from deltanet.train.tokenizers import load_tokenizer

# Dense bf16 tensor-core peaks (FLOP/s) for the MFU figure, by substrings of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = ((("H100", "PCIe"), 756e12), (("H100",), 989e12), (("H200",), 989e12), (("A100",), 312e12))
# The DeltaNetConfig fields that shape the weights: what a checkpoint's model must match to be resumed.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "mixer",
                       "attn_layers", "attn_window", "use_short_conv", "conv_size", "allow_neg_eigval",
                       "use_output_gate", "intermediate_size", "norm_eps", "rope_theta",
                       "tie_word_embeddings", "chunk_size")


def build_model_config(config: TrainConfig, tokenizer) -> DeltaNetConfig:
    """The DeltaNetConfig of the run: the preset, model_config's fields, vocab_size from the tokenizer."""
    overrides = dict(config.model_config)
    vocab_size = overrides.setdefault("vocab_size", tokenizer.vocab_size)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # bytes have none: samples run to the end
        overrides.setdefault(name, getattr(tokenizer, name, None))
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ConfigError(f"model_config vocab_size takes an integer, got {vocab_size!r}")
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"the tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens, more than "
                          f"model_config vocab_size={vocab_size} can embed")
    try:
        return preset_config(config.model, **overrides)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model {config.model!r}: {str(error).splitlines()[0]}") from None


def describe_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{key} {before.get(key)!r} there, {now.get(key)!r} now" for key in sorted(set(before) | set(now))
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


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW (fused on CUDA); weight decay on the matrices and conv filters only (not norms, biases,
    embeddings)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 and "embed" not in name else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device.type == "cuda")


def flatten_rows(input_ids: torch.Tensor, position_ids: torch.Tensor, fixed_count: bool = False):
    """Packed rows [m, T] -> one row [1, m T] and its document offsets cu_seqlens int64 [N + 1] (every row
    starts a document, as do positions 0), computed here on the host: the model and its ops then need not
    read them back from the GPU, which would stall the queue of launched kernels once per step.

    fixed_count: N is rounded up to a power of two (at least 8) with empty documents at the end, so that
    torch.compile sees a few shapes of cu_seqlens, not one per batch."""
    m, seq_len = input_ids.shape
    starts = position_ids.reshape(-1) == 0
    starts[::seq_len] = True
    offsets = starts.nonzero().flatten()
    padding = max(8, 1 << (len(offsets) - 1).bit_length()) - len(offsets) if fixed_count else 0
    cu_seqlens = torch.cat([offsets, torch.full((1 + padding,), m * seq_len)])
    return input_ids.reshape(1, -1), position_ids.reshape(1, -1), cu_seqlens


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on device; from pinned memory to a GPU, so that the copy does not wait for the GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def counted_targets(position_ids: torch.Tensor) -> int:
    """How many next-token targets of packed rows count (evaluation.counted_targets_mask)."""
    return int(counted_targets_mask(position_ids).sum())


def peak_flops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    return next((flops for keys, flops in PEAK_BF16_FLOPS if all(key in name for key in keys)), None)


class StopRequest:
    """SIGTERM / Ctrl-C ask the loop to checkpoint at the end of the current step and stop; a second Ctrl-C
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

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


class Clock:
    """Seconds spent training, with pauses (evaluation, checkpoints) left out."""

    def __init__(self) -> None:
        self.tick: float | None = None

    def start(self) -> None:
        self.tick = time.perf_counter()

    def lap(self) -> float:
        """Seconds since start or the last lap; the clock keeps running."""
        now = time.perf_counter()
        elapsed, self.tick = now - (self.tick or now), now
        return elapsed


class Trainer:
    """One training run: built from a TrainConfig (resuming its latest checkpoint when asked), then run()."""

    def __init__(self, config: TrainConfig, procs: Processes, stdout) -> None:
        self.procs, self.device, self.world = procs, procs.device, procs.world_size
        self.stdout, self.bar = stdout, None
        self.config = config = self._with_out_dir(config)
        self.out_dir = Path(config.out_dir)
        self._plan_batches()
        on_gpu = self.device.type == "cuda"
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and on_gpu)

        checkpoints = list_checkpoints(self.out_dir)
        if checkpoints and not config.resume:
            raise TrainError(f"{self.out_dir} already holds checkpoints (latest: step {checkpoints[-1][0]}); "
                             f"pass --resume to continue that run, or choose another --out-dir")
        if procs.is_main:
            remove_temporaries(self.out_dir)
        self.tokenizer = load_tokenizer(config.tokenizer)
        self.corpus = open_corpus(config.data, text_field=config.text_field,
                                  valid_percent=config.valid_percent)
        self.model_config = build_model_config(config, self.tokenizer)
        torch.manual_seed(config.seed)
        self.model = DeltaNetForCausalLM(self.model_config)
        self.model.to(self.device).train()
        self.model.model.gradient_checkpointing = config.activation_checkpointing
        self.optimizer = make_optimizer(self.model, config.lr, config.weight_decay, config.adam_betas,
                                        self.device)
        warmup = config.resolved_warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda index: warmup_cosine(index + 1, config.steps, warmup, config.min_lr_ratio))
        self.train_rows = PackedRows(self.corpus, self.tokenizer, "train", config.seq_len, seed=config.seed,
                                     shuffle=True)
        self.window = {"loss_sum": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        self.tokens_seen, self.seconds_trained = 0, 0.0
        self.start_step, self.last_checkpoint = 0, None
        if config.resume and checkpoints:
            self._resume(*checkpoints[-1])
        elif config.resume:
            self.say(f"--resume: no checkpoint in {self.out_dir}; starting a new run")
        if self.start_step >= config.steps:
            raise TrainError(f"--resume: the checkpoint is at step {self.start_step}, and "
                             f"steps={config.steps}; raise --steps to train further")

        self.valid = None
        if config.valid_percent > 0 and self.corpus.num_units("valid") > 0:
            # with several held-out files, the first seq_len tokens of each in a seeded order: rows from many
            # files rather than the start of one (one held-out unit, e.g. a file's tail: read it in order)
            several = self.corpus.num_units("valid") > 1
            rows = PackedRows(self.corpus, self.tokenizer, "valid", config.seq_len, seed=config.seed,
                              shuffle=True, max_document_tokens=config.seq_len if several else None)
            ids, positions = rows.next_rows(config.eval_rows)
            self.valid = (ids, positions, target_bytes(self.tokenizer, ids, positions))
        self.seen_epoch = self.train_rows.epoch  # passes over the text when last looked at (resume: so far)
        self.forward_model = self._wrap_model()
        self.flops_per_token = training_flops_per_token(self.model, self.model_config, config.seq_len)
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, grad norm) unchecked
        self.last_valid: dict[str, float] | None = None
        self.metrics: MetricsLog | None = None

    # --- setup -------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if self.procs.is_main:
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=self.stdout, flush=True)

    def _with_out_dir(self, config: TrainConfig) -> TrainConfig:
        out_dir = config.out_dir
        if not out_dir:
            if config.resume:
                raise ConfigError("--resume needs --out-dir: the folder of the run to continue")
            out_dir = self.procs.broadcast(f"runs/{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise ConfigError(f"--out-dir {out_dir!r} exists and is not a folder")
        return dataclasses.replace(config, out_dir=out_dir)

    def _plan_batches(self) -> None:
        config, world = self.config, self.world
        if config.batch_size % world:
            raise ConfigError(f"batch_size={config.batch_size} must be a multiple of the number of processes "
                              f"({world})")
        self.rows_per_process = config.batch_size // world
        self.micro_batch = config.micro_batch_size or self.rows_per_process
        if self.rows_per_process % self.micro_batch:
            raise ConfigError(f"micro_batch_size={self.micro_batch} must divide the rows per process "
                              f"(batch_size {config.batch_size} / {world} processes = "
                              f"{self.rows_per_process})")
        self.accumulation = self.rows_per_process // self.micro_batch

    def _resume(self, step: int, folder: Path) -> None:
        trainer_state, data_state, saved = load_trainer_state(folder)
        now = self.config.to_dict()
        changed = describe_differences({k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES},
                                       {k: v for k, v in now.items() if k not in RESUMABLE_CHANGES})
        if changed:
            raise TrainError(f"--resume: {folder} was written with other settings: {'; '.join(changed)}")
        saved_model = DeltaNetConfig.from_pretrained(folder)
        changed = describe_differences({k: getattr(saved_model, k) for k in ARCHITECTURE_FIELDS},
                                       {k: getattr(self.model_config, k) for k in ARCHITECTURE_FIELDS})
        if changed:
            raise TrainError(f"--resume: {folder} holds a different model configuration: "
                             f"{'; '.join(changed)}")
        load_model_weights(self.model, folder)
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        # the learning rate of the next step from this run's schedule (it differs when --steps changed)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        if saved["steps"] != self.config.steps:
            self.say(f"--resume: steps {saved['steps']} -> {self.config.steps}: the learning-rate schedule "
                     f"now decays to step {self.config.steps} (warm-up {self.config.resolved_warmup_steps} "
                     f"steps)")
        set_rng_state(trainer_state["rng"])
        self.train_rows.load_state_dict(data_state)
        self.window = dict(trainer_state["window"])
        self.tokens_seen = trainer_state["tokens_seen"]
        self.seconds_trained = trainer_state["seconds_trained"]
        self.start_step, self.last_checkpoint = step, folder

    def _wrap_model(self) -> torch.nn.Module:
        model: torch.nn.Module = self.model
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.compile:
            # One graph per bucket of document counts (flatten_rows' fixed_count); DDP splits it at its
            # gradient buckets, hence fullgraph only in one process.
            model = torch.compile(model, mode=self.config.compile_mode, dynamic=False,
                                  fullgraph=self.world == 1)
        return model

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # --- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        config = self.config
        params = sum(p.numel() for p in self.model.parameters())
        self.say(f"deltanet train: {config.model} ({params / 1e6:.2f}M parameters, vocab "
                 f"{self.model_config.vocab_size}) on {self.world} x {self.device.type}"
                 f"{' (bf16 autocast)' if self.use_bf16 else ''}; {self.corpus.description}: "
                 f"{self.corpus.num_units('train')} train / {self.corpus.num_units('valid')} held-out units; "
                 f"{config.batch_size} x {config.seq_len} tokens per step"
                 + (f" ({self.accumulation} micro-batches of {self.micro_batch} per process)"
                    if self.accumulation > 1 else "")
                 + f"; steps {self.start_step + 1}..{config.steps}; output {self.out_dir}")
        self.metrics = MetricsLog(self.out_dir, self.start_step, config.tensorboard,
                                  enabled=self.procs.is_main)
        if self.metrics.tensorboard_note:
            self.say(self.metrics.tensorboard_note)
        if self.procs.is_main and config.progress:
            self.bar = tqdm(total=config.steps, initial=self.start_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, desc="train")
        clock, step, stopped = Clock(), self.start_step, False
        stop_flag = torch.zeros(1, device=self.device)
        try:
            with StopRequest() as stop:
                clock.start()
                for step in range(self.start_step + 1, config.steps + 1):
                    self._step(step)
                    if self.bar is not None:
                        self.bar.update(1)
                    last = step == config.steps
                    stop_now = stop.requested
                    if self.world > 1:
                        # every process stops at the same step: agreed at log steps only, since reading the
                        # flag back waits for the GPU
                        stop_now = False
                        if step % config.log_interval == 0:
                            stop_flag.fill_(float(stop.requested))
                            stop_now = bool(self.procs.sum(stop_flag).item())
                    if step % config.log_interval == 0 or last:
                        self._log(step, clock)
                    if (config.eval_interval and step % config.eval_interval == 0) or last:
                        self._time_training(clock)
                        self._evaluate(step)
                        clock.start()
                    if step % config.checkpoint_interval == 0 or last or stop_now:
                        self._time_training(clock)
                        self._checkpoint(step)
                        clock.start()
                    if stop_now and not last:
                        stopped = True
                        break
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            self.metrics.close()
        if stopped:
            self.say(f"stopped at step {step} of {config.steps}: checkpoint {self.last_checkpoint}; continue "
                     f"with --resume --out-dir {self.out_dir}")
            return {"interrupted": True, "step": step, "checkpoint": str(self.last_checkpoint)}
        return self._summary(params)

    def _step(self, step: int) -> None:
        """One optimizer step over the global batch's rows (this process's share of them)."""
        config, device = self.config, self.device
        input_ids, position_ids = self.train_rows.next_rows(config.batch_size)
        if self.seen_epoch == 0 and self.train_rows.epoch > 0:  # the first time the text starts again
            read = self.tokens_seen + config.batch_size * config.seq_len  # with this step's rows
            self.say(f"step {step}: the training text starts again (one pass is at most "
                     f"{read // self.train_rows.epoch:,} tokens): from here on, held-out loss can rise as "
                     f"the model memorises it")
        self.seen_epoch = self.train_rows.epoch
        total_targets = counted_targets(position_ids)
        mine = slice(self.procs.rank * self.rows_per_process, (self.procs.rank + 1) * self.rows_per_process)
        input_ids, position_ids = input_ids[mine], position_ids[mine]
        no_sync = self.forward_model.no_sync if self.world > 1 else contextlib.nullcontext
        loss_sum = torch.zeros((), device=device)
        for index in range(self.accumulation):
            rows = slice(index * self.micro_batch, (index + 1) * self.micro_batch)
            targets = counted_targets(position_ids[rows])
            flat = flatten_rows(input_ids[rows], position_ids[rows], fixed_count=config.compile)
            ids, positions, cu_seqlens = (to_device(t, device) for t in flat)
            remember_host_offsets(cu_seqlens, flat[2].tolist())
            with contextlib.nullcontext() if index == self.accumulation - 1 else no_sync():
                with self.autocast():
                    # max_seqlen: documents never cross a row, so the host knows a bound without a read
                    output = self.forward_model(input_ids=ids, position_ids=positions, cu_seqlens=cu_seqlens,
                                                max_seqlen=config.seq_len, labels=ids, use_cache=False)
                if targets:
                    # the mean over this micro-batch's targets, re-weighted to the global batch's mean; DDP
                    # averages the gradients over processes, hence the factor world
                    scaled = output.loss * (targets * self.world / max(total_targets, 1))
                    loss_sum += output.loss.detach().float() * targets
                else:  # no target here (rows of one-token documents): a zero gradient
                    scaled = output.logits.sum() * 0.0
                scaled.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf  # the norm is logged either way
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending.append((step, self.procs.sum(loss_sum) / max(total_targets, 1), grad_norm.detach()))
        self.tokens_seen += config.batch_size * config.seq_len
        self.window["tokens"] += config.batch_size * config.seq_len

    def _check_pending(self) -> float:
        """Sync the pending losses and gradient norms into the window; a NaN/Inf stops the run with its step
        (no checkpoint after it). -> the last step's gradient norm."""
        if not self.pending:
            return math.nan
        values = torch.stack([torch.stack([loss.float(), norm.float()]) for _, loss, norm in self.pending])
        kept = (f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint")
        for (step, _, _), (loss, norm) in zip(self.pending, values.tolist()):
            for name, value in (("loss", loss), ("gradient norm", norm)):
                if not math.isfinite(value):
                    raise TrainError(f"{name} is {value} at step {step}: training stopped ({kept}); lower "
                                     f"--lr or check the data")
            self.window["loss_sum"] += loss
            self.window["steps"] += 1
        self.pending.clear()
        return norm

    def _time_training(self, clock: Clock) -> None:
        elapsed = clock.lap()
        self.window["seconds"] += elapsed
        self.seconds_trained += elapsed

    def _log(self, step: int, clock: Clock) -> None:
        grad_norm = self._check_pending()
        self._time_training(clock)
        window = self.window
        values = {"loss": window["loss_sum"] / max(window["steps"], 1), "lr": self.step_lr,
                  "grad_norm": grad_norm, "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                  "tokens": self.tokens_seen, "epoch": self.train_rows.epoch}
        self.metrics.write(step, "train", values)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_s']:,.0f}",
                                 refresh=False)
        else:
            self.say(f"step {step}: loss {values['loss']:.4f}, lr {values['lr']:.2e}, "
                     f"{values['tokens_per_s']:,.0f} tokens/s")
        window.update(loss_sum=0.0, steps=0, tokens=0, seconds=0.0)

    def _evaluate(self, step: int) -> None:
        if self.valid is None:
            return
        ids, positions, num_bytes = self.valid
        nll_sum, targets = held_out_nll(self.model, ids, positions, self.micro_batch, self.device,
                                        self.autocast)
        loss, bits = nll_sum / max(targets, 1), bits_per_byte(nll_sum, num_bytes)
        self.last_valid = {"loss": loss, "bits_per_byte": bits}
        self.metrics.write(step, "valid", self.last_valid)
        self.say(f"step {step}: held-out loss {loss:.4f}, {bits:.4f} bits per byte")

    def _checkpoint(self, step: int) -> None:
        self._check_pending()
        state = {"step": step, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "window": dict(self.window),
                 "tokens_seen": self.tokens_seen, "seconds_trained": self.seconds_trained}
        if self.procs.is_main:
            self.last_checkpoint = save_checkpoint(self.out_dir, step, self.model, state,
                                                   self.train_rows.state_dict(), self.config.to_dict(),
                                                   self.config.keep_checkpoints)
        self.procs.barrier()

    def _held_out_prompt(self) -> str:
        """The start of the first held-out document: a prompt in the style of the data, whatever it is."""
        if self.valid is None:
            return "def "
        ids, positions, _ = self.valid
        length = min(32, ids.shape[1])
        end = next((t for t in range(1, length) if positions[0, t] == 0), length)  # one document only
        return self.tokenizer.decode(ids[0, :end].tolist())

    def _summary(self, params: int) -> dict[str, Any]:
        config = self.config
        tokens_per_s = self.tokens_seen / max(self.seconds_trained, 1e-9)
        summary = {"interrupted": False, "step": config.steps, "tokens": self.tokens_seen,
                   "seconds": self.seconds_trained, "tokens_per_s": tokens_per_s,
                   "model_tflops": self.flops_per_token * tokens_per_s / 1e12,
                   "checkpoint": str(self.last_checkpoint), "parameters": params}
        peak = peak_flops(self.device) if self.device.type == "cuda" and self.use_bf16 else None
        if peak:
            summary["mfu"] = self.flops_per_token * tokens_per_s / (peak * self.world)
        self.say(f"done: {config.steps} steps, {self.tokens_seen:,} tokens in {self.seconds_trained:.0f} s "
                 f"of training ({tokens_per_s:,.0f} tokens/s, {summary['model_tflops']:.2f} model TFLOP/s"
                 + (f", MFU {summary['mfu']:.1%}" if "mfu" in summary else "") + ")")
        if self.last_valid is not None:
            summary.update(valid_loss=self.last_valid["loss"],
                           valid_bits_per_byte=self.last_valid["bits_per_byte"])
            self.say(f"held-out: loss {self.last_valid['loss']:.4f} nats per token, "
                     f"{self.last_valid['bits_per_byte']:.4f} bits per byte")
        self.say(f"model: {self.last_checkpoint} (DeltaNetForCausalLM.from_pretrained loads it)")
        if config.sample_tokens and self.procs.is_main:
            prompt = config.sample_prompt or self._held_out_prompt()
            summary["sample"] = generate_sample(self.model, self.tokenizer, prompt, config.sample_tokens,
                                                config.seed, self.device, self.autocast)
            self.say(f"sample ({config.sample_tokens} tokens after {prompt!r}):\n{prompt}{summary['sample']}")
        return summary


def train(config: TrainConfig, stdout=None) -> dict[str, Any]:
    """Run (or resume) the training the config describes; -> a summary (steps, tokens, losses, bits per byte,
    throughput, final checkpoint). User errors raise TrainError subclasses with one-line messages."""
    procs = start_processes(config.device)
    try:
        return Trainer(config, procs, stdout or sys.stdout).run()
    finally:
        procs.stop()
