"""Zero-shot and few-shot tasks of lm-eval (EleutherAI's LM Evaluation Harness) on a checkpoint: the
harness's tasks by name (hellaswag, piqa, arc_easy, lambada_openai, ...), or your own task files with
--include-path; prints lm-eval's results table. Needs the 'harness' extra: pip install "deltanet[harness]".

How the model answers lm-eval's three kinds of request (DeltaNetLM below):

* loglikelihood(context, continuation): the sum of ln p over the continuation's tokens given the context,
  and whether greedy decoding would have produced exactly those tokens. As lm-eval expects, whitespace at the
  end of the context belongs to the continuation ("Q: ... A:" + " Paris"), and the pair is split in tokens
  where the context's own tokens end within the tokens of context + continuation, so that the model reads the
  text as the tokenizer cuts it whole. Requests are sorted by length and scored --batch-size at a time, left
  padded, in one forward each. A context is cut from the left to fit --max-length tokens with its
  continuation (a continuation longer than that is scored whole).
* loglikelihood_rolling(text): the log-likelihood of a whole text (perplexity tasks: wikitext, ...), fed
  --max-length tokens at a time with the model's cache carried from window to window, so that each token is
  predicted from everything before it, as in one forward over the whole text (exact for DeltaNet's state; the
  cache of global attention layers grows with the text).
* generate_until(context, until, max_gen_toks): greedy decoding with the cache until a stop string, the
  tokenizer's EOS token or max_gen_toks tokens (256 when the task gives none); the text is cut before the
  stop string. Tasks that ask for sampling are decoded greedily all the same (a warning says so).

What is not scored. Text is tokenized as in training, with no special tokens. A text with nothing before it
(an empty context, a rolling text) has its first token given, not predicted: training never predicts a
document's first token (deltanet eval ppl does the same). lm-eval's own models condition it on a BOS or EOS
token instead, which a deltanet model never saw at the start of a document.

Tasks. Names are looked up in lm-eval's task index (`lm-eval ls tasks` lists them) and in --include-path;
a task may also be named by its YAML file. A local data file works offline: `dataset_path: json` with
`dataset_kwargs: {data_files: {test: FILE}}`, FILE relative to the working directory (lm-eval's rule).
Indexing lm-eval's ~15,000 built-in tasks takes about 10 s on 2 CPU cores; when every name is a task of
--include-path (or a YAML file) that index is skipped.

Where it sits: on top of deltanet.eval.loading (the model and its tokenizer) and the models' cache; lm-eval
is imported only here, and only the command needs it installed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from deltanet.eval.errors import EvalError, first_line
from deltanet.eval.loading import add_checkpoint_argument, add_model_options, load_model, model_folder

try:
    from lm_eval.api.model import LM
except ImportError:  # the 'harness' extra is not installed: `run` says how to install it
    LM = object

INSTALL_HINT = 'pip install "deltanet[harness]"'
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for tasks that set no max_gen_toks

logger = logging.getLogger(__name__)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _left_padded(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 [B, L_max] with each row at the right end, and the mask, bool [B, L_max], False at padding.
    Padding holds token 0; as an attention mask, the mask keeps every real token from seeing it (and the
    model takes a mask without padding for none)."""
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        ids[index, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[index, width - len(row):] = True
    return ids.to(device), mask.to(device)


class DeltaNetLM(LM):
    """A deltanet causal LM and its tokenizer as an lm-eval model (lm_eval.api.model.LM); one process.

    Args:
        model: a DeltaNetForCausalLM (anything with new_cache() and forward(input_ids, attention_mask,
            cache, use_cache, logits_to_keep)) in eval mode.
        tokenizer: deltanet.train.tokenizers.ByteTokenizer or HuggingFaceTokenizer (encode, decode and,
            if it has one, eos_token_id).
        batch_size: requests scored or generated side by side.
        max_length: tokens of context (with the continuation) per forward; the window of rolling texts.
        source, progress: the model's name in the results; progress bars on stderr.
    """

    def __init__(self, model, tokenizer, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_length: int = DEFAULT_MAX_LENGTH, source: str = "", progress: bool = True):
        super().__init__()
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.source = batch_size, max_length, source
        self.progress = progress
        self._device = model.device
        # log_softmax in float32 at least: bf16 logits carry 8 bits of mantissa
        self._score_dtype = torch.promote_types(model.dtype, torch.float32)
        self._warned_sampling = False

    def get_model_info(self) -> dict:
        """What simple_evaluate adds to results["config"]."""
        return {"model_source": self.source, "model_dtype": str(self.model.dtype).removeprefix("torch."),
                "tokenizer": getattr(self.tokenizer, "name", type(self.tokenizer).__name__),
                "max_length": self.max_length, "batch_size": self.batch_size}

    def _bar(self, total: int, desc: str, disable_tqdm: bool):
        from tqdm import tqdm

        disable = True if disable_tqdm or not self.progress else None  # None: only on a terminal
        return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=disable)

    def _run_longest_first(self, items: list, indices: list[int], length, run_batch, results: list, desc: str,
                           disable_tqdm: bool) -> list:
        """results[i] = run_batch's answer for items[i], for each i of `indices`, run `batch_size` at a time
        longest first (length(item)): padding stays small, and an out-of-memory shows in the first batch."""
        order = sorted(indices, key=lambda index: -length(items[index]))
        with self._bar(len(order), desc, disable_tqdm) as bar:
            for batch in _batches(order, self.batch_size):
                for index, answer in zip(batch, run_batch([items[index] for index in batch])):
                    results[index] = answer
                bar.update(len(batch))
        return results

    # ------------------------------------------------------------------------------ loglikelihood

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The tokens of context + continuation, split where the context's tokens end.

        Whitespace at the end of the context moves to the continuation. The split point is the number of
        tokens of the context alone, held to leave at least one token on each side when the whole has two
        or more (a context whose last token merges with the continuation's first shifts that token to the
        continuation). An empty context: the whole's first token becomes the context, given and not scored.
        """
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        whole = self.tokenizer.encode(stripped + continuation)
        split = len(self.tokenizer.encode(stripped)) if stripped else 1
        split = max(1, min(split, len(whole) - 1))
        return whole[:split], whole[split:]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*request.args) for request in requests]
        return self.loglikelihood_tokens(pairs, disable_tqdm)

    @torch.no_grad()
    def loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]],
                             disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum of ln p(continuation | context), greedy?) for each (context ids, continuation ids).

        An empty continuation scores (0.0, True); a context needs at least one token otherwise.
        Longest first, so that the first batch shows at once whether the memory suffices.
        """
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = []
        for index, (context, continuation) in enumerate(pairs):
            if not continuation:
                results[index] = (0.0, True)
            elif not context:
                raise EvalError(f"loglikelihood request {index}: a continuation needs at least one token of "
                                "context")
            else:
                order.append(index)
        return self._run_longest_first(pairs, order, lambda pair: len(pair[0]) + len(pair[1]),
                                       self._score_batch, results, "loglikelihood", disable_tqdm)

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        rows, continuations = [], []
        for context, continuation in pairs:
            # The inputs are context + continuation but its last token. Cut the context from the left to
            # fit max_length, keeping at least its last token (which predicts the continuation's first).
            excess = len(context) + len(continuation) - 1 - self.max_length
            cut = min(max(excess, 0), len(context) - 1)
            rows.append((context + continuation)[cut:-1])
            continuations.append(continuation)
        input_ids, attention_mask = _left_padded(rows, self._device)  # (B, L)
        # Rows end together (left padding): the continuations' predictions are the last K positions.
        targets, target_mask = _left_padded(continuations, self._device)  # (B, K): K = the longest
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                            logits_to_keep=targets.shape[1]).logits  # (B, K, V)
        log_probs = F.log_softmax(logits.to(self._score_dtype), dim=-1)
        target_log_probs = log_probs.gather(-1, targets[..., None]).squeeze(-1)  # (B, K)
        # masked_fill, not a product: a padded position's value must not reach the sum
        sums = target_log_probs.masked_fill(~target_mask, 0).sum(dim=-1, dtype=torch.float64)  # (B,)
        choice = logits[..., :self.tokenizer.vocab_size].argmax(dim=-1)  # (B, K): among the tokenizer's ids
        greedy = ((choice == targets) | ~target_mask).all(dim=-1)
        return list(zip(sums.tolist(), greedy.tolist()))

    # ------------------------------------------------------------------------------ loglikelihood_rolling

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        with self._bar(len(requests), "loglikelihood_rolling", disable_tqdm) as bar:
            for request in requests:
                results.append(self.rolling_loglikelihood_tokens(self.tokenizer.encode(request.args[0])))
                bar.update(1)
        return results

    @torch.no_grad()
    def rolling_loglikelihood_tokens(self, ids: list[int]) -> float:
        """sum of ln p(t_i | t_<i) over i = 1 .. L-1 of one text's tokens t_0 .. t_{L-1}, its inputs fed
        max_length at a time with the cache carried over (the result of one forward over the whole)."""
        if len(ids) < 2:
            return 0.0  # no target: the first token is given
        tokens = torch.tensor(ids, dtype=torch.long, device=self._device)
        inputs, targets = tokens[:-1], tokens[1:]
        cache = self.model.new_cache()
        total = torch.zeros((), dtype=torch.float64, device=self._device)
        for start in range(0, inputs.numel(), self.max_length):
            window = inputs[None, start:start + self.max_length]  # (1, W)
            logits = self.model(input_ids=window, cache=cache, use_cache=True).logits[0]  # (W, V)
            log_probs = F.log_softmax(logits.to(self._score_dtype), dim=-1)
            window_targets = targets[start:start + self.max_length, None]  # (W, 1)
            total += log_probs.gather(-1, window_targets).sum(dtype=torch.float64)
        return float(total)

    # ------------------------------------------------------------------------------ generate_until

    def _generation_settings(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """The stop strings and the token budget of one request's generation arguments."""
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None) or []
        until = [stop for stop in ([until] if isinstance(until, str) else until) if stop]
        max_new = int(gen_kwargs.pop("max_gen_toks", gen_kwargs.pop("max_new_tokens", DEFAULT_MAX_GEN_TOKS)))
        sampling = gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0
        if sampling and not self._warned_sampling:
            logger.warning("a task asks for sampling (%s); deltanet eval harness decodes greedily",
                           gen_kwargs)
            self._warned_sampling = True
        return until, max_new

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts = []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            until, max_new = self._generation_settings(gen_kwargs)
            ids = self.tokenizer.encode(context)
            if not ids:
                raise EvalError(f"generation request {index} has an empty prompt: nothing to continue from")
            # the context cut from the left so that it and the new tokens fit max_length
            prompts.append((ids[-max(self.max_length - max_new, 1):], until, max_new))
        return self._run_longest_first(prompts, list(range(len(prompts))), lambda prompt: len(prompt[0]),
                                       self._generate_batch, [None] * len(prompts), "generate_until",
                                       disable_tqdm)

    @torch.no_grad()
    def _generate_batch(self, prompts: list[tuple[list[int], list[str], int]]) -> list[str]:
        """Greedy continuations of left-padded prompts, each cut before its first stop string; a row leaves
        the batch (and the cache) when it is done."""
        eos_token_id = getattr(self.tokenizer, "eos_token_id", None)
        input_ids, attention_mask = _left_padded([ids for ids, _, _ in prompts], self._device)
        cache = self.model.new_cache()
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1]  # (B, V)
        new_ids: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        active = list(range(len(prompts)))  # the rows still generating; the cache's rows, in this order
        while active:
            tokens = logits[:, :self.tokenizer.vocab_size].argmax(dim=-1)  # (A,): ids the tokenizer has
            still = []
            for row, token in zip(active, tokens.tolist()):
                _, until, max_new = prompts[row]
                if token == eos_token_id:
                    continue  # not part of the text
                new_ids[row].append(token)
                texts[row] = self.tokenizer.decode(new_ids[row])
                if any(stop in texts[row] for stop in until) or len(new_ids[row]) >= max_new:
                    continue
                still.append(row)
            if not still:
                break
            if still != active:
                keep = torch.tensor([active.index(row) for row in still], device=self._device)
                cache.batch_select_indices(keep)
                tokens = tokens[keep]
                active = still
            logits = self.model(input_ids=tokens[:, None], cache=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]  # (A, V)
        for row, (_, until, _) in enumerate(prompts):
            for stop in until:  # each cut leaves the text before the earliest stop string
                texts[row] = texts[row].split(stop, 1)[0]
        return texts


# ---------------------------------------------------------------------------------------------------------
# Tasks: names, task files and what lm-eval raises for them
# ---------------------------------------------------------------------------------------------------------


def _describe_yaml_error(exc: Exception) -> str:
    """One line for a task file that cannot be read: a YAML error's problem and where it is."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem or exc.context} (line {mark.line + 1}, column {mark.column + 1})"
    return first_line(exc)


def read_task_file(path: Path) -> dict:
    """A task file's settings as lm-eval reads them (its `include:` files merged in), or an EvalError
    naming the file."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        settings = load_yaml(path, resolve_func=False, recursive=True)
    except Exception as exc:  # yaml errors, an include that is missing, a file that cannot be read
        raise EvalError(f"task file {path}: {_describe_yaml_error(exc)}") from exc
    if not isinstance(settings, dict):
        raise EvalError(f"task file {path}: a task file holds a mapping (task: NAME, dataset_path: ...), "
                        f"not a {type(settings).__name__}")
    is_task = isinstance(settings.get("task"), str) and "class" not in settings
    if is_task and not {"dataset_path", "custom_dataset"} & settings.keys():
        # lm-eval would fail later with "expected str, bytes or os.PathLike object, not NoneType"
        raise EvalError(f"task file {path}: no dataset_path (a Hugging Face dataset, or json / csv / text "
                        "with dataset_kwargs: {data_files: ...})")
    return settings


def check_task_folder(folder: Path) -> list[str]:
    """Every *.yaml file under `folder` read as lm-eval's index reads it (which skips a broken file in
    silence, leaving its task 'unknown'): an EvalError for the first that cannot be read; the files that
    define no task, group or Python class, as hints for an unknown task name."""
    if not folder.is_dir():
        raise EvalError(f"--include-path {str(folder)!r} is not a folder")
    without_task = []
    for path in sorted(folder.glob("**/*.yaml")):
        if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue  # lm-eval's index skips these folders too
        if not {"task", "group", "class"} & read_task_file(path).keys():
            without_task.append(f"{path} (no 'task' key)")
    return without_task


def _unknown_task_error(name: str, manager, include_path: Path | None, hints: list[str]) -> EvalError:
    near = difflib.get_close_matches(name, manager.all_tasks, n=4, cutoff=0.6)
    message = f"unknown task {name!r}"
    if near:
        message += f" (did you mean {', '.join(near)}?)"
    where = "lm-eval's tasks" + (f" and {include_path}" if include_path else "")
    listing = "lm-eval ls tasks" + (f" --include_path {include_path}" if include_path else "")
    message += f": it is none of {where} (`{listing}` lists them)"
    if hints:
        message += f"; files skipped: {', '.join(hints[:3])}" + (" ..." if len(hints) > 3 else "")
    return EvalError(message)


def load_tasks(names: list[str], include_path: Path | None = None) -> tuple[list, object]:
    """The lm-eval Task and Group objects of `names` (task, group or tag names, or task YAML files), built
    with their data, and the TaskManager that found them.

    Raises EvalError for an unknown name (with near matches), a task file that cannot be read, and a task
    that cannot be built (missing or unknown settings, data that cannot be loaded), naming the file.
    """
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    hints = check_task_folder(include_path) if include_path is not None else []
    files = {name: read_task_file(Path(name)) for name in names
             if name.endswith((".yaml", ".yml")) and Path(name).is_file()}
    # lm-eval's own index takes ~10 s to build: first try without it, enough when every name is a task of
    # include_path or a task's YAML file (a group or tag may name built-in tasks: those take the full index)
    paths = str(include_path) if include_path is not None else None
    manager = TaskManager(include_path=paths, include_defaults=False)
    local = all(
        isinstance(files[name].get("task"), str) if name in files
        else (entry := manager.task_index.get(name)) is not None and entry.kind in (Kind.TASK, Kind.PY_TASK)
        for name in names
    )
    if not local:
        manager = TaskManager(include_path=paths)
    for name in names:
        if name not in manager.all_tasks and name not in files:
            raise _unknown_task_error(name, manager, include_path, hints)

    built = []
    for name in names:
        entry = manager.task_index.get(name)
        where = f" ({entry.yaml_path})" if entry is not None and entry.yaml_path and name not in files else ""
        try:
            loaded = manager.load([name])
        except Exception as exc:  # TypeError for unknown settings, datasets' errors, a missing !function, ...
            raise EvalError(f"task {name!r}{where} cannot be loaded: {first_line(exc)}") from exc
        # The top of what the name stands for: its group (not the group's subgroups), else its tasks.
        children = {child for child_names in loaded["group_map"].values() for child in child_names}
        groups = [group for group_name, group in loaded["groups"].items() if group_name not in children]
        built += groups if groups else list(loaded["tasks"].values())
    return built, manager


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--tasks", required=True, metavar="T1,T2",
                        help="lm-eval task, group or tag names, or task YAML files, separated by commas "
                        "(`lm-eval ls tasks` lists the names)")
    parser.add_argument("--include-path", type=Path, metavar="DIR",
                        help="a folder of your own task YAML files, searched with lm-eval's tasks")
    parser.add_argument("--num-fewshot", type=int, metavar="N",
                        help="examples in each prompt (default: the task's own, else 0)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the first N examples of each task (a quick check, not a result)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"requests scored side by side (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, metavar="TOKENS",
                        help="tokens per forward: contexts are cut from the left to fit, long texts are "
                        f"read in windows of this size (default: {DEFAULT_MAX_LENGTH})")
    add_model_options(parser)
    parser.add_argument("--json", metavar="FILE", help="also write lm-eval's results to this file")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (they are shown only when stderr is a terminal anyway)")


def _check_arguments(args: argparse.Namespace) -> list[str]:
    """The task names of --tasks; an EvalError for an option out of range."""
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    checks = [
        (bool(names), f"--tasks names no task: {args.tasks!r}"),
        (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
        (args.max_length >= 2, f"--max-length must be at least 2, got {args.max_length}"),
        (args.limit is None or args.limit >= 1, f"--limit must be at least 1, got {args.limit}"),
        (args.num_fewshot is None or args.num_fewshot >= 0,
         f"--num-fewshot must be at least 0, got {args.num_fewshot}"),
    ]
    for ok, message in checks:
        if not ok:
            raise EvalError(message)
    return names


def run(args: argparse.Namespace) -> int:
    names = _check_arguments(args)
    if LM is object:
        raise EvalError(f"deltanet eval harness needs lm-eval, which is not installed: {INSTALL_HINT}")
    import lm_eval
    from lm_eval.utils import handle_non_serializable, make_table

    model_folder(args.checkpoint)  # fails fast on a bad path, before the tasks' data is read
    tasks, manager = load_tasks(names, args.include_path)
    loaded = load_model(args.checkpoint, args.device, args.dtype, args.tokenizer)
    dtype = str(loaded.dtype).removeprefix("torch.")
    print(f"{loaded.source}: {', '.join(names)}, {loaded.device}, {dtype}, max length {args.max_length}",
          file=sys.stderr)
    lm = DeltaNetLM(loaded.model, loaded.tokenizer, args.batch_size, args.max_length, loaded.source,
                    args.progress)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                                      task_manager=manager, log_samples=False)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.json:
        text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
        print(f"results written to {args.json}", file=sys.stderr)
    return 0
