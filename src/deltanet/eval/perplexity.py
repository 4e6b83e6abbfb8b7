"""Perplexity and bits per byte of a checkpoint on text: by default a training run's own held-out split,
each document scored whole, in windows that carry the model's state from one to the next.

Data: --data takes the sources of `deltanet train --data`, read by deltanet.train.corpus and divided into
the same "train" and held-out "valid" split as in training (--valid-percent, the run's by default). With no
--data, a checkpoint written by `deltanet train` (train_config.json beside the weights) is evaluated on its
run's own data settings: `deltanet eval ppl runs/x` scores the text that run held out.

What is counted. A document is tokenized as in training (a Hugging Face tokenizer with an EOS token appends
it, as packed training rows do); of its tokens t_0 .. t_{L-1}, each of t_1 .. t_{L-1} is a target,
predicted from t_0 .. t_{i-1} of the same document only. t_0 is no target: nothing precedes it, and training
never predicts a document's first token from the document before it (train/evaluation.py,
counted_targets_mask). Documents of fewer than 2 tokens have no target and are skipped (not counted).
    NLL           sum over targets of -ln p(t_i | t_<i), divided by the number of targets (nats per token)
    perplexity    exp(NLL)
    bits per byte the same sum / ln 2 / bytes, bytes = the UTF-8 bytes that t_1 .. t_{L-1} stand for
                  (tokenizer.count_bytes, as train/evaluation.py's target_bytes; EOS stands for none)
With a byte tokenizer, bits per byte is NLL / ln 2: a target is a byte.

Windows. The inputs t_0 .. t_{L-2} of a document are fed --window tokens at a time. By default the model's
cache (DeltaNet's recurrent and conv states, attention layers' keys and values) is carried from one window to
the next, so each target sees the whole document before it and the result is that of one forward over the
whole document, with activations bounded by the window (the cache of global attention layers still grows
with the document; sliding-window and DeltaNet layers' does not). With --no-carry-state each window starts
from an empty cache: a target sees only the tokens of its own window before it (the first target of a window
sees just one token). Both score the same targets, so their NLLs compare; the held-out loss that training
prints is close to the no-carry figure at --window seq_len (training rows carry no state either).

Where it sits: on top of deltanet.eval.loading (model, tokenizer), deltanet.train.corpus (the sources and
the split) and the models' cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from deltanet.eval.errors import EvalError, first_line
from deltanet.eval.loading import add_checkpoint_argument, add_model_options, load_model, model_folder
from deltanet.train.config import FIELDS
from deltanet.train.corpus import Corpus, open_corpus
from deltanet.train.errors import DataError

SPLITS = ("valid", "train", "all")
DEFAULT_WINDOW = 2048
DEFAULT_BATCH_SIZE = 4


@dataclass
class Score:
    """Totals over the scored documents."""

    documents: int = 0
    targets: int = 0  # tokens scored: every token of a document but its first
    nll_sum: float = 0.0  # nats, summed over the targets

    def add(self, other: Score) -> None:
        self.documents += other.documents
        self.targets += other.targets
        self.nll_sum += other.nll_sum


@torch.no_grad()
def score_batch(model, documents: list[torch.Tensor], window: int, carry_state: bool = True,
                on_scored: Callable[[int], None] | None = None) -> Score:
    """The summed NLL of the targets of a few documents scored side by side, one row each.

    Args:
        model: a DeltaNetForCausalLM in eval mode.
        documents: token ids, int [L_i] (uint8 from the byte tokenizer is fine), each L_i >= 2.
        window: tokens fed per forward (>= 1).
        carry_state: continue each window from the cache of the ones before (the whole-document result);
            False: every window from an empty cache.
        on_scored: called with the number of targets scored after each window (a progress bar).

    The documents start together, one a row; a row leaves the batch (and the cache, by
    batch_select_indices) after the window that holds its last input. Inside that window it is padded on
    the right, under an attention mask: no real token sees the padding, and no padded position is scored.
    """
    device = model.device
    num_inputs = [int(ids.numel()) - 1 for ids in documents]  # inputs t_0..t_{L-2} = targets t_1..t_{L-1}
    if min(num_inputs) < 1:
        raise ValueError("every document needs at least 2 tokens (one target)")
    longest = max(num_inputs)
    tokens = torch.zeros(len(documents), longest + 1, dtype=torch.long)  # (B, L_max), zero-padded
    for row, ids in enumerate(documents):
        tokens[row, :ids.numel()] = ids
    tokens = tokens.to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, L_max - 1) each
    loss_dtype = torch.promote_types(model.dtype, torch.float32)  # bf16 logits: the softmax in float32
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)  # one host read per batch, at the end
    cache = model.new_cache() if carry_state else None
    active = list(range(len(documents)))  # the documents with inputs left; the cache's rows, in this order
    for start in range(0, longest, window):
        still = [row for row in active if num_inputs[row] > start]
        if still != active:
            if cache is not None:
                keep = [active.index(row) for row in still]
                cache.batch_select_indices(torch.tensor(keep, dtype=torch.long, device=device))
            active = still
        width = min(window, longest - start)  # the longest document is active to the end
        lengths = [min(num_inputs[row] - start, width) for row in active]
        rows = torch.tensor(active, dtype=torch.long, device=device)
        window_inputs = inputs[rows, start:start + width]  # (A, W)
        window_targets = targets[rows, start:start + width]  # (A, W)
        real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (A, W), False at padding
        real = real.to(device)
        attention_mask = None if min(lengths) == width else real.long()
        logits = model(input_ids=window_inputs, attention_mask=attention_mask, cache=cache,
                       use_cache=carry_state).logits  # (A, W, V)
        nll = F.cross_entropy(logits.flatten(0, 1).to(loss_dtype), window_targets.flatten(), reduction="none")
        # masked_fill, not a product: a padded position's value (even NaN) must not reach the sum
        nll_sum += nll.view(real.shape).masked_fill(~real, 0).sum(dtype=torch.float64)
        if on_scored is not None:
            on_scored(sum(lengths))
    return Score(documents=len(documents), targets=sum(num_inputs), nll_sum=float(nll_sum))


def score_documents(model, documents: Iterable[torch.Tensor], window: int, carry_state: bool = True,
                    batch_size: int = 1, on_scored: Callable[[int], None] | None = None) -> Score:
    """score_batch over `documents` (each int [L >= 2]) taken batch_size at a time, in order."""
    if window < 1 or batch_size < 1:
        raise ValueError(f"window and batch_size must be >= 1, got {window} and {batch_size}")
    total = Score()
    documents = iter(documents)
    while batch := list(itertools.islice(documents, batch_size)):
        total.add(score_batch(model, batch, window, carry_state, on_scored))
    return total


# ---------------------------------------------------------------------------------------------------------
# The text: which sources, which split, which documents
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DataSettings:
    sources: list[str]
    text_field: str
    valid_percent: float
    origin: str  # where the settings came from, for messages: "--data" or the run's train_config.json


def run_settings(folder: Path | None) -> dict | None:
    """The training settings saved beside a checkpoint (train_config.json), or None."""
    path = None if folder is None else folder / "train_config.json"
    if path is None or not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: cannot read the run's settings: {first_line(exc)}") from exc
    if not isinstance(settings, dict):
        raise EvalError(f"{path}: the run's settings are not a JSON object")
    return settings


def data_settings(args: argparse.Namespace, run: dict | None, run_config_path: str) -> DataSettings:
    """--data, --text-field and --valid-percent, each falling back to the run's setting, then training's
    default; no --data and no run: an EvalError."""
    run = run or {}
    if args.data is None and "data" not in run:
        raise EvalError("no text to evaluate: pass --data SOURCE (a file, a folder, 'stdlib' or hf:NAME); "
                        "only checkpoints of `deltanet train` runs default to their run's data")

    def setting(name: str):
        value = getattr(args, name)
        return value if value is not None else run.get(name, FIELDS[name].default)  # training's default

    sources = args.data if args.data is not None else run["data"]
    if isinstance(sources, str):
        sources = [sources]
    origin = "--data" if args.data is not None else f"the run's data settings ({run_config_path})"
    return DataSettings(list(sources), setting("text_field"), float(setting("valid_percent")), origin)


def open_split(settings: DataSettings, split: str) -> tuple[Corpus, str]:
    """The corpus and which of its splits holds the text of --split (all: everything, nothing held out)."""
    valid_percent = 0.0 if split == "all" else settings.valid_percent
    if split == "valid" and valid_percent == 0:
        raise EvalError(f"--split valid: nothing is held out at valid_percent 0 ({settings.origin}): use "
                        "--split all, or --valid-percent")
    try:
        corpus = open_corpus(settings.sources, text_field=settings.text_field, valid_percent=valid_percent)
    except DataError as exc:
        raise EvalError(f"{exc} [data from {settings.origin}]") from exc
    return corpus, "train" if split == "all" else split


def document_tokens(corpus: Corpus, split: str, tokenizer, max_documents: int | None = None,
                    max_tokens: int | None = None, counts: dict | None = None) -> Iterator[torch.Tensor]:
    """The token ids [L >= 2] of the split's documents, in the corpus' order (no shuffle), tokenized as in
    training, and what their targets stand for in bytes added to counts["bytes"].

    Documents of fewer than 2 tokens are skipped. max_documents: at most this many documents; max_tokens:
    at most this many targets in all, the last document cut to fit.
    """
    encode_tensor = getattr(tokenizer, "encode_tensor", None)
    documents = targets = 0
    stream = corpus.documents(split, shuffle=False)
    try:
        for text in stream:
            if max_documents is not None and documents >= max_documents:
                break
            if max_tokens is not None and targets >= max_tokens:
                break
            if encode_tensor is not None:
                ids = encode_tensor(text)
            else:
                ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
            if max_tokens is not None:
                ids = ids[:max_tokens - targets + 1]
            if ids.numel() < 2:
                continue
            documents += 1
            targets += ids.numel() - 1
            if counts is not None:
                counts["bytes"] = counts.get("bytes", 0) + tokenizer.count_bytes(ids[1:].tolist())
            yield ids
    finally:
        stream.close()


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--data", nargs="+", metavar="SOURCE",
                        help="the text, as `deltanet train --data`: 'stdlib', 'site-packages', files or "
                        "folders (.txt and other text, .jsonl, .parquet), 'hf:NAME[:CONFIG]' (default: the "
                        "run's data, for a checkpoint of `deltanet train`)")
    parser.add_argument("--split", choices=SPLITS, default="valid",
                        help="valid: the held-out split, chosen as in training; train: the rest; all: every "
                        "document, nothing held out (default: valid)")
    parser.add_argument("--text-field", metavar="NAME",
                        help="the text's field in .jsonl, .parquet and Hugging Face datasets (default: the "
                        f"run's, else {FIELDS['text_field'].default!r})")
    parser.add_argument("--valid-percent", type=float, metavar="P",
                        help="the share held out, as `deltanet train --valid-percent` (default: the run's, "
                        f"else {FIELDS['valid_percent'].default})")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="TOKENS",
                        help=f"tokens per forward pass (default: {DEFAULT_WINDOW})")
    parser.add_argument("--no-carry-state", dest="carry_state", action="store_false",
                        help="start every window from an empty cache (each target sees only its window) "
                        "instead of carrying the state over (each target sees its whole document)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"documents scored side by side (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--max-documents", type=int, metavar="N", help="score at most this many documents")
    parser.add_argument("--max-tokens", type=int, metavar="N",
                        help="score at most this many tokens (the last document is cut)")
    add_model_options(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the results to this file")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (it is shown only when stderr is a terminal anyway)")


def _check_arguments(args: argparse.Namespace) -> None:
    checks = [
        (args.window >= 1, f"--window must be at least 1, got {args.window}"),
        (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
        (args.max_documents is None or args.max_documents >= 1,
         f"--max-documents must be at least 1, got {args.max_documents}"),
        (args.max_tokens is None or args.max_tokens >= 1,
         f"--max-tokens must be at least 1, got {args.max_tokens}"),
        (args.valid_percent is None or 0 <= args.valid_percent < 100,
         f"--valid-percent must be in [0, 100), got {args.valid_percent}"),
    ]
    for ok, message in checks:
        if not ok:
            raise EvalError(message)
    if args.json and not Path(args.json).resolve().parent.is_dir():  # found out now, not after the work
        raise EvalError(f"--json {args.json!r}: its folder does not exist")


def results_table(results: dict) -> str:
    """The figures as a two-line table."""
    bits = "n/a" if results["bits_per_byte"] is None else f"{results['bits_per_byte']:.4f}"
    columns = [("documents", f"{results['documents']:,}"), ("tokens scored", f"{results['tokens']:,}"),
               ("bytes", f"{results['bytes']:,}"), ("NLL (nats/token)", f"{results['nll']:.4f}"),
               ("perplexity", f"{results['perplexity']:.4f}"), ("bits per byte", bits)]
    widths = [max(len(name), len(value)) for name, value in columns]
    header = "  ".join(name.rjust(width) for (name, _), width in zip(columns, widths))
    row = "  ".join(value.rjust(width) for (_, value), width in zip(columns, widths))
    return f"{header}\n{row}"


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    folder = model_folder(args.checkpoint)  # fails fast on a bad path, before any data is read
    run_config = run_settings(folder)
    settings = data_settings(args, run_config, str(folder / "train_config.json") if folder else "")
    corpus, split = open_split(settings, args.split)
    loaded = load_model(args.checkpoint, args.device, args.dtype, args.tokenizer)

    counts = {"bytes": 0}
    documents = document_tokens(corpus, split, loaded.tokenizer, args.max_documents, args.max_tokens, counts)
    state = "carried over" if args.carry_state else "reset each window"
    print(f"{loaded.source}: {args.split} split of {' '.join(settings.sources)} (data from "
          f"{settings.origin}), window {args.window}, state {state}, {loaded.device}, "
          f"{str(loaded.dtype).removeprefix('torch.')}", file=sys.stderr)
    bar = tqdm(total=args.max_tokens, unit="tok", unit_scale=True, dynamic_ncols=True, file=sys.stderr,
               desc="eval ppl", disable=None if args.progress else True)  # None: only on a terminal
    start = time.perf_counter()
    try:
        score = score_documents(loaded.model, documents, args.window, args.carry_state, args.batch_size,
                                on_scored=bar.update)
    except DataError as exc:  # a bad record, or a split with no document at all, found while reading
        raise EvalError(f"{exc} [data from {settings.origin}]") from exc
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    if score.targets == 0:
        raise EvalError(f"no tokens to score: the {args.split} split of {' '.join(settings.sources)} has no "
                        "document of 2 tokens or more")
    nll = score.nll_sum / score.targets
    results = {
        "checkpoint": loaded.source,
        "data": settings.sources,
        "data_from": settings.origin,
        "split": args.split,
        "valid_percent": settings.valid_percent,
        "text_field": settings.text_field,
        "tokenizer": getattr(loaded.tokenizer, "name", None),
        "window": args.window,
        "carry_state": args.carry_state,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "documents": score.documents,
        "tokens": score.targets,
        "bytes": counts["bytes"],
        "nll_sum": score.nll_sum,
        "nll": nll,
        "perplexity": math.exp(nll),
        # None: only special tokens were scored, which stand for no text
        "bits_per_byte": score.nll_sum / math.log(2) / counts["bytes"] if counts["bytes"] else None,
        "seconds": seconds,
        "tokens_per_second": score.targets / seconds,
    }
    print(results_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0
