"""The training run's settings: one dataclass, read from a TOML or YAML file, overridden on the command line.

Every field is an option of `deltanet train` (`--seq-len 512` for seq_len) and a key of the config file; the
help text of each option is the field's `help` metadata. Values are checked against the field's type when they
are read, so that a typo fails before any work starts, with a one-line message (ConfigError).
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltanet.train.errors import ConfigError


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Settings of one training run. The defaults train a small byte-level DeltaNet on the Python standard
    library's source, on the CPU in a few minutes; the optimiser settings are the DeltaNet paper's recipe."""

    # model
    model: str = _opt("deltanet-mini", "model preset, '<architecture>-<size>' (e.g. deltanet-340m, "
                      "deltanet-swa-1.3b, transformer++-340m; the mini size trains on a CPU); see "
                      "deltanet.models.presets")
    model_config: dict[str, Any] = _opt(
        {}, "DeltaNetConfig fields over the preset's (file: a table; command line: KEY=VALUE, repeatable); "
        "vocab_size defaults to the tokenizer's")
    # data
    data: list[str] = _opt(["stdlib"], "training text: 'stdlib' (this Python's standard library source, the "
                      "default), 'site-packages' (the .py files of its installed packages: usually far "
                      "more text, no download), local files or directories (.txt and other text, .jsonl, "
                      ".parquet), or 'hf:NAME[:CONFIG]' (a Hugging Face dataset, streamed); several may be "
                      "given")
    text_field: str = _opt("text", "the text's field in .jsonl, .parquet and Hugging Face datasets")
    tokenizer: str = _opt("bytes", "'bytes' (UTF-8 bytes, vocabulary 256) or a Hugging Face tokenizer (a hub "
                          "name or a local path, through AutoTokenizer)")
    valid_percent: float = _opt(2.0, "share of the data held out for validation, in percent (by file; by "
                                "document within a single file)")
    seq_len: int = _opt(256, "tokens per row; documents are packed into rows with their boundaries kept")
    # optimisation
    steps: int = _opt(400, "optimizer steps")
    batch_size: int = _opt(16, "rows per optimizer step over all processes (the global batch: the same "
                           "whatever the number of processes)")
    micro_batch_size: int = _opt(0, "rows per forward pass in each process; 0: batch_size / processes (no "
                                 "gradient accumulation); smaller values accumulate gradients")
    lr: float = _opt(3e-4, "peak learning rate of AdamW")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to norms, biases and embeddings)")
    adam_betas: list[float] = _opt([0.9, 0.95], "AdamW betas")
    warmup_steps: int = _opt(-1, "linear warm-up steps, then cosine decay to min_lr_ratio x lr; -1: 10% of "
                             "steps, at most 2000")
    min_lr_ratio: float = _opt(0.1, "the learning rate at the last step, as a fraction of lr")
    grad_clip: float = _opt(1.0, "clip the gradients' global norm to this (0: no clipping)")
    seed: int = _opt(0, "seed of the model's initialisation, the data order and the samples")
    # hardware
    device: str = _opt("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'")
    precision: str = _opt("auto", "'auto' (bf16 autocast on the GPU, float32 on the CPU), 'bf16' or 'fp32'")
    compile: bool = _opt(False, "torch.compile the model")
    compile_mode: str = _opt("default", "torch.compile mode: default or max-autotune-no-cudagraphs (not "
                             "reduce-overhead: CUDA graphs would replay the first batch's document layout)")
    activation_checkpointing: bool = _opt(False, "recompute each block's activations in the backward pass "
                                          "(less memory, ~30% more compute)")
    # output
    out_dir: str = _opt("", "folder for checkpoints, metrics.jsonl and TensorBoard events; empty: a new "
                        "runs/<model>-<date>-<time> (give it with --resume)")
    resume: bool = _opt(False, "continue the run in out_dir from its latest checkpoint")
    checkpoint_interval: int = _opt(100, "steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = _opt(3, "how many of the latest checkpoints to keep")
    log_interval: int = _opt(10, "steps between metric lines (loss, learning rate, tokens/s)")
    eval_interval: int = _opt(200, "steps between validations (one always runs at the end; 0: only then)")
    eval_rows: int = _opt(32, "held-out rows per validation")
    tensorboard: bool = _opt(True, "also write TensorBoard event files (out_dir/tensorboard)")
    sample_tokens: int = _opt(200, "tokens of a generated sample printed at the end (0: none)")
    sample_prompt: str = _opt("", "prompt of that sample; empty: the first 32 tokens of a held-out document "
                              "('def ' without held-out data)")
    progress: bool = _opt(True, "show a progress bar (loss, tokens/s, time left)")

    def __post_init__(self) -> None:
        checks = [
            (self.seq_len >= 2, "seq_len must be at least 2"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.micro_batch_size >= 0, "micro_batch_size must be >= 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
             "adam_betas must be two numbers in [0, 1)"),
            (self.warmup_steps >= -1, "warmup_steps must be >= 0 (or -1 for the default)"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32"),
            # The ops lay out packed documents on the host at each call; a CUDA graph would replay the
            # layout of the batch it captured.
            (self.compile_mode in ("default", "max-autotune-no-cudagraphs"),
             "compile_mode must be default or max-autotune-no-cudagraphs (reduce-overhead's CUDA graphs "
             "cannot follow the document layout of packed batches)"),
            (self.checkpoint_interval >= 1, "checkpoint_interval must be at least 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.log_interval >= 1, "log_interval must be at least 1"),
            (self.eval_interval >= 0, "eval_interval must be >= 0"),
            (self.eval_rows >= 1, "eval_rows must be at least 1"),
            (self.sample_tokens >= 0, "sample_tokens must be >= 0"),
            (0 <= self.valid_percent < 100, "valid_percent must be in [0, 100)"),
            (len(self.data) >= 1, "data must name at least one source"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def resolved_warmup_steps(self) -> int:
        return min(2000, self.steps // 10) if self.warmup_steps == -1 else self.warmup_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)
# Settings that describe how a run is done, not what it computes: they may differ when a run is resumed.
RESUMABLE_CHANGES = frozenset({
    "steps", "out_dir", "resume", "checkpoint_interval", "keep_checkpoints", "log_interval", "eval_interval",
    "eval_rows", "tensorboard", "sample_tokens", "sample_prompt", "progress", "device", "compile",
    "compile_mode", "activation_checkpointing", "micro_batch_size",
})


def check_value(name: str, value: Any) -> Any:
    """value as TrainConfig.<name> takes it (ints accepted for floats), else ConfigError naming both."""
    expected = TYPES[name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if name == "data" and isinstance(value, str):  # one source
        value = [value]
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} takes true or false, got {value!r}")
    container = typing.get_origin(expected) or expected  # list[str] -> list
    if not isinstance(value, container) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name} takes a {_type_name(expected)}, got {value!r} ({type(value).__name__})")
    if name == "adam_betas":
        try:
            return [float(b) for b in value]
        except (TypeError, ValueError):
            raise ConfigError(f"adam_betas takes two numbers, got {value!r}") from None
    if name == "data" and not all(isinstance(s, str) for s in value):
        raise ConfigError(f"data takes a list of strings, got {value!r}")
    return value


def _type_name(expected: Any) -> str:
    container = typing.get_origin(expected) or expected
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "table (mapping)"}.get(container, str(expected))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a .toml, .yaml or .yml file, checked: unknown keys and wrong types are ConfigErrors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({error.reason} at byte "
                          f"{error.start})") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {str(path)!r}: expected a .toml, .yaml or .yml file")
    except ConfigError:
        raise
    except Exception as error:  # the parsers' own errors (tomllib.TOMLDecodeError, yaml.YAMLError)
        detail = " ".join(str(error).split())
        raise ConfigError(f"config file {str(path)!r} cannot be parsed: {detail}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of settings, got "
                          f"{type(raw).__name__}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {str(path)!r}: unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(FIELDS)}")
    return {name: check_value(name, value) for name, value in raw.items()}


def parse_model_config_item(item: str) -> tuple[str, Any]:
    """"KEY=VALUE" of --model-config: VALUE read as JSON (numbers, true/false, lists, null), else a string."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--model-config takes KEY=VALUE, got {item!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key.strip(), value


def build_config(file_settings: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """TrainConfig from the defaults, then the file's settings, then the command line's; model_config tables
    are merged key by key (a command-line KEY=VALUE changes one field of the file's table)."""
    settings = dict(file_settings)
    for name, value in overrides.items():
        value = check_value(name, value)
        settings[name] = {**settings.get(name, {}), **value} if name == "model_config" else value
    return TrainConfig(**settings)
