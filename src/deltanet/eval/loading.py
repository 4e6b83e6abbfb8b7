"""Load a model and its tokenizer from what a user names: a checkpoint folder, a training run's folder (its
latest checkpoint), a folder written by save_pretrained, or a Hugging Face hub name.

The tokenizer is, in this order: the one asked for (`tokenizer=`), the one the run trained with
(train_config.json beside the weights), tokenizer files in the folder, or bytes when the vocabulary has 256
tokens. Anything else is an EvalError that says to pass --tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from deltanet.eval.errors import EvalError, first_line
from deltanet.train.checkpoint import list_checkpoints
from deltanet.train.tokenizers import load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


CHECKPOINT_HELP = ("a checkpoint folder, a training run's folder (its latest checkpoint), a save_pretrained "
                   "folder or a Hugging Face hub name")


def add_checkpoint_argument(parser) -> None:
    """The CHECKPOINT positional argument of the commands that use a model."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)


def add_model_options(parser) -> None:
    """--device, --dtype and --tokenizer, the options of load_model, as every command that uses a model
    spells them (they become args.device, args.dtype, args.tokenizer)."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N "
                        "(default: auto)")
    parser.add_argument("--dtype", default="auto", help="weights' dtype: auto (bfloat16 on CUDA, float32 "
                        "elsewhere), float32, bfloat16, float16, float64 (default: auto)")
    parser.add_argument("--tokenizer", metavar="NAME",
                        help="'bytes' or a Hugging Face tokenizer, instead of the checkpoint's own")


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers causal LM in eval mode, on `device`
    tokenizer: object  # deltanet.train.tokenizers.ByteTokenizer or HuggingFaceTokenizer
    source: str  # the folder (or hub name) the weights came from
    device: torch.device
    dtype: torch.dtype  # of the weights


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; anything else must be a device torch knows and that exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EvalError(f"--device {name!r} is not a device: {first_line(exc)}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {name!r}: this machine has no CUDA device (use --device cpu)")
    return device


DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA, float32 elsewhere."""
    if name not in DTYPES:
        raise EvalError(f"--dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[name] or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def _looks_like_path(spec: str) -> bool:
    # A hub name is "name" or "owner/name"; anything with more parts or a path prefix is meant as a path.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def model_folder(spec: str) -> Path | None:
    """The folder holding config.json for a local `spec` (a run folder gives its latest checkpoint), None for
    a hub name; an EvalError for a local path that is not a model."""
    path = Path(spec).expanduser()
    if not path.exists():
        # "runs/typo" beside an existing runs/ is a mistyped path, not the hub's user "runs" (whose lookup
        # would cost half a minute of retries offline)
        if _looks_like_path(spec) or path.parent != Path(".") and path.parent.is_dir():
            raise EvalError(f"no such checkpoint: {spec!r} does not exist")
        return None
    if path.is_file():
        raise EvalError(f"{spec!r} is a file, not a model: name its folder (holding config.json and "
                        "model.safetensors), or a training run's folder")
    if (path / "config.json").is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1][1]
    raise EvalError(f"{spec!r} is not a model: it has no config.json (a checkpoint folder) and no "
                    "checkpoints/step-* (a training run's folder)")


def _tokenizer_spec(folder: Path | None, spec: str, vocab_size: int) -> str:
    if folder is not None:
        train_config = folder / "train_config.json"
        if train_config.is_file():
            try:
                return json.loads(train_config.read_text())["tokenizer"]
            except (ValueError, KeyError) as exc:
                raise EvalError(f"{train_config}: no readable 'tokenizer' setting "
                                f"({first_line(exc)})") from exc
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return str(folder)
    elif vocab_size != 256:
        return spec  # a hub model: its tokenizer sits beside it
    if vocab_size == 256:
        return "bytes"
    raise EvalError(f"cannot tell which tokenizer {spec!r} was trained with (no train_config.json or "
                    f"tokenizer files, and {vocab_size} tokens is not bytes): pass --tokenizer")


def load_model(spec: str, device: torch.device | str = "auto", dtype: str | torch.dtype = "auto",
               tokenizer: str | None = None) -> LoadedModel:
    """The model named by `spec` on `device` with weights in `dtype`, in eval mode, and its tokenizer.

    Raises EvalError (one line) for a path that does not exist or is not a model, a hub name that cannot be
    loaded, or a tokenizer that cannot be told or loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    import deltanet.models  # noqa: F401  (registers model_type "deltanet" with the Auto classes)

    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    folder = model_folder(spec)
    source = str(folder) if folder is not None else spec
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "not a model we can read"
        where = "" if folder is not None else " (not a local path, so tried as a Hugging Face hub name)"
        raise EvalError(f"cannot load {spec!r}{where}: {first_line(exc)}") from exc
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar would come before our one line
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype)
    except Exception as exc:
        raise EvalError(f"cannot load the weights of {spec!r}: {first_line(exc)}") from exc
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    tokenizer_name = tokenizer or _tokenizer_spec(folder, spec, config.vocab_size)
    loaded_tokenizer = load_tokenizer(tokenizer_name)
    if loaded_tokenizer.vocab_size > config.vocab_size:
        raise EvalError(f"the tokenizer {tokenizer_name!r} has {loaded_tokenizer.vocab_size} tokens, more "
                        f"than the model's vocab_size {config.vocab_size}: pass the tokenizer it was trained "
                        "with")
    return LoadedModel(model, loaded_tokenizer, source, device, dtype)
