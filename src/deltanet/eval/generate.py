"""Generate text from a checkpoint, streamed to stdout as it comes, then the prompt's prefill time and the
decoding speed on stderr.

The prompt comes from --prompt, --prompt-file or stdin. Decoding is greedy with --greedy (or --temperature
0), else sampled at --temperature with nucleus (--top-p) filtering, from a generator seeded with --seed. It
stops after --max-new-tokens tokens, or at the tokenizer's end-of-sequence token (not printed) if it has one.

Where it sits: on top of deltanet.eval.loading (the model and its tokenizer) and the models' cache. The loop
is written out here rather than calling transformers' generate(), so that the prefill and each decoding step
are timed on their own: one forward over the prompt fills the cache (DeltaNet states, attention keys and
values), then one single-token forward per new token continues from it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from deltanet.eval.errors import EvalError
from deltanet.eval.loading import add_checkpoint_argument, add_model_options, load_model

REPLACEMENT_CHAR = "\ufffd"  # what decoders put where a character's bytes are incomplete or invalid
# Tokens of context decoded before the new ones: enough for decoders that drop or merge a text's leading
# space (SentencePiece's "▁the" alone decodes to "the") and for a character spread over up to 4 byte tokens.
DETOKENIZE_CONTEXT = 5


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it measures the work (CUDA is async)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def next_token(logits: torch.Tensor, temperature: float, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row: int64 [B] from logits [B, vocab] (any float dtype).

    temperature 0: the argmax (the first of ties, as torch.argmax). Otherwise a draw from
    softmax(logits / temperature) restricted to its nucleus: the most probable tokens whose probabilities
    sum to at least top_p (at least one token; top_p 1 keeps them all), renormalised.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    # float32 at least: bf16 probabilities (8 bits of mantissa) would blur the nucleus' cumulative sum
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # a token stays if the tokens more probable than it sum to less than top_p: the first always does
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # normalises the rows itself


class TextStream:
    """Decodes tokens one at a time into the text they add, holding back an incomplete character.

    A byte tokenizer's character may span up to 4 tokens and a BPE with byte fallback's several: decoded
    alone, their first tokens give U+FFFD. Each `push` decodes the last few tokens of context together with
    the new ones and returns the text beyond the context's, or "" while that text ends with U+FFFD (the
    character's bytes are still coming). A byte sequence that is invalid, not incomplete, comes out as
    U+FFFD once the next character has come (or at `finish`). The pieces add up to
    decode(context + tokens) minus decode(context), which for a prompt of whole characters is the decoded
    tokens.
    """

    def __init__(self, tokenizer, context_ids: list[int]):
        self._decode = tokenizer.decode
        self._ids = list(context_ids)
        self._prefix_start = max(len(self._ids) - DETOKENIZE_CONTEXT, 0)  # decoded as context only
        self._emitted_end = len(self._ids)  # tokens before this are printed (or are the prompt)

    def push(self, token: int) -> str:
        """The text that `token` completes: "" while a character is incomplete."""
        self._ids.append(token)
        prefix_text = self._decode(self._ids[self._prefix_start:self._emitted_end])
        text = self._decode(self._ids[self._prefix_start:])
        if len(text) <= len(prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix_start, self._emitted_end = self._emitted_end, len(self._ids)
        return text[len(prefix_text):]

    def finish(self) -> str:
        """What is held back at the end (an incomplete character, as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix_start:self._emitted_end])
        text = self._decode(self._ids[self._prefix_start:])
        self._prefix_start = self._emitted_end = len(self._ids)
        return text[len(prefix_text):]


@dataclass
class Generation:
    """What `generate` produced and how long it took."""

    token_ids: list[int]  # the new tokens, the end-of-sequence token included if generation stopped there
    stopped_at_eos: bool
    prefill_seconds: float  # the forward over the prompt, from the prompt on the device to its last logits
    decode_seconds: float  # from the end of the prefill to the last token chosen (its sampling, on_token)

    @property
    def decode_steps(self) -> int:
        """Single-token forward passes: every new token but the first, whose logits come from the prefill."""
        return max(len(self.token_ids) - 1, 0)


@torch.no_grad()
def generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, eos_token_id: int | None = None,
             on_token: Callable[[int], None] | None = None, vocab_size: int | None = None) -> Generation:
    """Continue `prompt_ids` (at least one token) with up to `max_new_tokens` tokens, one row, with the cache.

    Args:
        model: a DeltaNetForCausalLM (anything with new_cache() and forward(input_ids, cache, use_cache,
            logits_to_keep)), in eval mode.
        temperature, top_p: see `next_token`; temperature 0 is greedy.
        seed: seeds a generator of the model's device that only the sampling draws from.
        eos_token_id: stop after generating it (it is included in token_ids).
        on_token: called with each new token as soon as it is chosen (to stream it).
        vocab_size: choose among the first vocab_size ids only (the tokenizer's, when the model's output layer
            is wider: its other ids stand for no text).
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token")
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    cache = model.new_cache()
    inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, P)
    synchronize(device)
    start = time.perf_counter()
    logits = model(input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # (1, V)
    usable = slice(0, vocab_size)  # vocab_size None: every id
    synchronize(device)
    prefill_end = time.perf_counter()
    new_ids: list[int] = []
    stopped_at_eos = False
    while True:
        token = next_token(logits[:, usable], temperature, top_p, generator)  # (1,)
        token_id = int(token)  # the host needs it anyway: to stream it and to stop at EOS
        new_ids.append(token_id)
        if on_token is not None:
            on_token(token_id)
        if token_id == eos_token_id:
            stopped_at_eos = True
            break
        if len(new_ids) == max_new_tokens:
            break
        logits = model(input_ids=token[:, None], cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    synchronize(device)  # int(token) synchronised already; kept for on_token's work, if it queued any
    decode_end = time.perf_counter()
    return Generation(new_ids, stopped_at_eos, prefill_end - start, decode_end - prefill_end)


@torch.no_grad()
def warm_up(model, prompt_ids: list[int], steps: int = 2) -> None:
    """An untimed prefill of the prompt and `steps` single-token steps, from a cache then thrown away.

    The first calls of each shape pay one-time costs that are no part of the model's speed: Triton compiles
    its kernels, and on the CPU too the first calls of each shape are several times slower than later ones.
    """
    cache = model.new_cache()
    inputs = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    logits = model(input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    for _ in range(steps):
        token = logits.argmax(dim=-1)
        logits = model(input_ids=token[:, None], cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    synchronize(model.device)


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 file")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                        help="stop after this many new tokens (default: 256)")
    parser.add_argument("--greedy", action="store_true",
                        help="always take the most probable token (the same as --temperature 0)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T",
                        help="divide the logits by this before sampling; 0: greedy (default: 0.8)")
    parser.add_argument("--top-p", type=float, default=0.95, metavar="P",
                        help="sample from the most probable tokens whose probabilities sum to this, in "
                        "(0, 1]; 1: all tokens (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the sampling (default: 0)")
    add_model_options(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the figures and the text to this file")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="time the first calls too (by default an untimed prefill and two steps run "
                        "first, so that kernel compilation is not counted)")


def _check_arguments(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise EvalError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise EvalError(f"--temperature must be a number >= 0 (0: greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:  # NaN fails this too
        raise EvalError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.json and not Path(args.json).resolve().parent.is_dir():  # found out now, not after the work
        raise EvalError(f"--json {args.json!r}: its folder does not exist")


def read_prompt(args: argparse.Namespace) -> tuple[str, str]:
    """(the prompt, where it came from) from --prompt, --prompt-file or a piped stdin."""
    if args.prompt is not None:
        return args.prompt, "--prompt"
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise EvalError(f"--prompt-file {args.prompt_file!r}: no such file")
        try:
            return path.read_text(encoding="utf-8"), f"--prompt-file {args.prompt_file!r}"
        except UnicodeDecodeError as exc:
            raise EvalError(f"--prompt-file {args.prompt_file!r} is not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from None
    if sys.stdin is None or sys.stdin.isatty():
        raise EvalError("no prompt: pass --prompt TEXT or --prompt-file FILE, or pipe the prompt into stdin")
    return sys.stdin.read(), "stdin"


def _empty_prompt(source: str) -> EvalError:
    return EvalError(f"the prompt ({source}) is empty: generation needs at least one prompt token")


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    prompt, prompt_source = read_prompt(args)
    if not prompt:
        raise _empty_prompt(prompt_source)  # before the model is loaded
    temperature = 0.0 if args.greedy else args.temperature
    loaded = load_model(args.checkpoint, args.device, args.dtype, args.tokenizer)
    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise _empty_prompt(prompt_source)
    eos_token_id = getattr(tokenizer, "eos_token_id", None)  # ByteTokenizer has none

    stream = TextStream(tokenizer, prompt_ids)
    pieces: list[str] = []

    def show(token_id: int) -> None:
        if token_id == eos_token_id:
            return  # not text: decoders would print it as "</s>" and the like
        piece = stream.push(token_id)
        if piece:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()

    if args.warmup:
        warm_up(loaded.model, prompt_ids)
    result = generate(loaded.model, prompt_ids, args.max_new_tokens, temperature, args.top_p, args.seed,
                      eos_token_id, on_token=show, vocab_size=loaded.tokenizer.vocab_size)
    rest = stream.finish()
    pieces.append(rest)
    sys.stdout.write(rest)
    sys.stdout.flush()
    text = "".join(pieces)

    tokens_per_second = result.decode_steps / result.decode_seconds if result.decode_steps else None
    figures = {
        "checkpoint": loaded.source,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "prompt_tokens": len(prompt_ids),
        "prefill_seconds": result.prefill_seconds,
        "prefill_tokens_per_second": len(prompt_ids) / max(result.prefill_seconds, 1e-9),
        "generated_tokens": len(result.token_ids),
        "decode_steps": result.decode_steps,
        "decode_seconds": result.decode_seconds,
        "decode_tokens_per_second": tokens_per_second,
        "stopped_at_eos": result.stopped_at_eos,
        "warmup": args.warmup,
        "temperature": temperature,
        "top_p": args.top_p if temperature > 0 else None,
        "seed": args.seed if temperature > 0 else None,
        "prompt": prompt,
        "text": text,
        "token_ids": result.token_ids,
    }
    if sys.stdout.isatty() and not text.endswith("\n"):
        print(file=sys.stderr)  # the figures start on a line of their own; stdout keeps exactly the text
    speed = f" ({tokens_per_second:.1f} tokens/s)" if tokens_per_second is not None else ""
    stop = ", stopped at end-of-sequence" if result.stopped_at_eos else ""
    print(f"prompt: {len(prompt_ids)} tokens, prefill {result.prefill_seconds:.3f} s; generated "
          f"{len(result.token_ids)} tokens{stop}, decode {result.decode_steps} steps in "
          f"{result.decode_seconds:.3f} s{speed} [{figures['device']}, {figures['dtype']}]", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0
