"""Multi-query associative recall (MQAR, the Zoology benchmark): train small models to recall the values of
keys seen earlier in the sequence, and report their accuracy side by side.

A sequence of T tokens starts with P key-value pairs (k1 v1 k2 v2 ... kP vP: 2P tokens, distinct keys from
the lower half of the vocabulary, values from the upper half). Every key is then asked again once, at a
position of the remaining T - 2P tokens, followed by its value; the model must predict the value at the
key. Query positions are drawn without replacement with a power law over their distance from the pairs
(weight d^(a - 1), a = 0.01: near ones are likelier), and the tokens between queries are random. Only the P
predictions at the queries are trained and scored; accuracy is the fraction of them that are right.

The paper's setting (the defaults): 2-layer models of width 64 and 128, T = 512, P = 64, vocabulary 8192;
DeltaNet with 2 heads and no short convolution reaches 100% at every width, the linear-attention family far
less. The training examples are drawn afresh every step (no fixed training set); the test set is a fixed
seed's examples, the same for every model. Two details differ from Zoology's generator as we understand it:
values are drawn with replacement (two keys may share a value), and the token after each query is its
value (in Zoology, random): the model is causal, so that token never helps the prediction at its key, and
each key is asked only once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from deltanet.eval.errors import EvalError

ARCHITECTURES = {  # name -> DeltaNetConfig fields of a 2-layer model's token mixers
    "deltanet": dict(mixer="deltanet", use_short_conv=False),  # the paper's MQAR setting: no convolution
    "linear-attn": dict(mixer="linear_attn", use_short_conv=False),
    "transformer++": dict(mixer="attn"),
    # with the short causal convolution of the language models (width 4) before the recurrence
    "deltanet-conv": dict(mixer="deltanet", use_short_conv=True),
    "linear-attn-conv": dict(mixer="linear_attn", use_short_conv=True),
}
DEFAULT_MODELS = ["deltanet", "linear-attn", "transformer++"]
IGNORE = -100  # target of the positions that are not scored
# Training mixture: short, easy examples first teach the lookup, the full task (last) makes it hold at length.
DEFAULT_MIX = "64:4,128:8,256:16,256:32,512:64"


@dataclass(frozen=True)
class MQARTask:
    seq_len: int = 512  # T, tokens per example
    num_kv_pairs: int = 64  # P
    vocab_size: int = 8192
    power_a: float = 0.01  # query distances are drawn with weight d^(a - 1)

    def validate(self) -> None:
        if self.num_kv_pairs < 1:
            raise EvalError(f"--kv-pairs must be at least 1, got {self.num_kv_pairs}")
        if 4 * self.num_kv_pairs > self.seq_len:
            raise EvalError(f"--seq-len {self.seq_len} is too short for --kv-pairs {self.num_kv_pairs}: the "
                            f"pairs and one query-answer slot per key take 4 x {self.num_kv_pairs} tokens")
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise EvalError(f"--vocab {self.vocab_size} is too small: its lower half (keys, less token 0) "
                            f"must hold {self.num_kv_pairs} distinct keys")
        if not 0 < self.power_a <= 1:
            raise EvalError(f"--power-a must be in (0, 1], got {self.power_a}")


def make_examples(task: MQARTask, num_examples: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, targets), both int64 [N, T] on `device`: targets hold the value at each query's key
    position and IGNORE elsewhere (P scored positions per row). Deterministic for a generator state; drawn
    on the generator's device."""
    N, T, P, V = num_examples, task.seq_len, task.num_kv_pairs, task.vocab_size
    gen_device = generator.device
    half = V // 2
    # P distinct keys per row from 1 .. half - 1 (0 is left out of the keys), values from the upper half
    keys = torch.rand(N, half - 1, generator=generator, device=gen_device).topk(P, dim=1).indices + 1
    values = torch.randint(half, V, (N, P), generator=generator, device=gen_device)
    inputs = torch.randint(0, V, (N, T), generator=generator, device=gen_device)  # the filler between queries
    pairs = torch.stack([keys, values], dim=2).reshape(N, 2 * P)
    inputs[:, :2 * P] = pairs
    # Query slots: (T - 2P) // 2 two-token slots after the pairs; P of them per row without replacement,
    # weighted by distance^(a - 1) (Gumbel top-k draws without replacement in proportion to the weights).
    num_slots = (T - 2 * P) // 2
    distance = torch.arange(1, num_slots + 1, device=gen_device, dtype=torch.float64)
    log_weight = (task.power_a - 1) * distance.log()
    uniform = torch.rand(N, num_slots, generator=generator, device=gen_device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    slots = (log_weight + gumbel).topk(P, dim=1).indices  # [N, P]: slot of the i-th key's query
    key_positions = 2 * P + 2 * slots
    inputs.scatter_(1, key_positions, keys)
    inputs.scatter_(1, key_positions + 1, values)
    targets = torch.full_like(inputs, IGNORE)
    targets.scatter_(1, key_positions, values)
    return inputs.to(device), targets.to(device)


def model_config(architecture: str, width: int, num_heads: int, task: MQARTask, num_layers: int = 2):
    """The DeltaNetConfig of a `num_layers` MQAR model: width = hidden size, num_heads heads of width / heads,
    the SwiGLU default width, untied embeddings."""
    from deltanet.models import DeltaNetConfig

    if architecture not in ARCHITECTURES:
        raise EvalError(f"unknown --models entry {architecture!r}; choose from {', '.join(ARCHITECTURES)}")
    if width < 1 or num_heads < 1:
        raise EvalError(f"--dims and --heads must be at least 1, got width {width} with {num_heads} heads")
    if width % num_heads:
        raise EvalError(f"--dims entry {width} is not divisible by --heads {num_heads}")
    return DeltaNetConfig(vocab_size=task.vocab_size, hidden_size=width, num_hidden_layers=num_layers,
                          num_heads=num_heads, head_dim=width // num_heads, **ARCHITECTURES[architecture])


def scored_logits(model, input_ids: torch.Tensor, targets: torch.Tensor, per_row: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [M, vocab], targets [M]) at the M scored positions only, in row-major order: the output
    layer never sees the other positions (at T = 512, vocabulary 8192, full logits would be 8x the memory
    of the whole model).

    per_row: the number of scored positions in every row (make_examples' P), when known: the positions are
    then found without reading anything back from the device (boolean indexing has a data-dependent size,
    so on a GPU the host would wait for the forward pass in every training step)."""
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state  # [N, T, D]
    scored = targets != IGNORE
    if per_row is None:
        return model.lm_head(hidden[scored]), targets[scored]
    positions = torch.argsort((~scored).to(torch.int8), dim=1, stable=True)[:, :per_row]  # [N, P], ascending
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # [N, P, D]
    return model.lm_head(picked.flatten(0, 1)), targets.gather(1, positions).flatten()


@torch.no_grad()
def accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, autocast) -> float:
    """Fraction of the scored positions of (inputs, targets) [N, T] whose argmax is the value."""
    was_training = model.training
    model.eval()
    right = total = 0
    for start in range(0, inputs.shape[0], batch_size):
        with autocast():
            logits, answers = scored_logits(model, inputs[start:start + batch_size],
                                            targets[start:start + batch_size])
        right += int((logits.argmax(-1) == answers).sum())
        total += answers.numel()
    model.train(was_training)
    return right / total


@dataclass
class RunSettings:
    steps: int = 4000
    batch_size: int = 128
    warmup_fraction: float = 0.1
    weight_decay: float = 0.1
    test_examples: int = 1000
    eval_every: int = 250  # steps between test evaluations; the run stops early once `stop_at` is reached
    stop_at: float = 1.0  # test accuracy that ends a run early (1.0: only a perfect score)
    time_limit: float = 0.0  # seconds of training after which a run ends at its next evaluation (0: none)
    seed: int = 0


def parse_mix(text: str, task: MQARTask) -> list[MQARTask]:
    """"T:P,T:P,..." -> the training tasks (the test task's vocabulary and power law); "" -> [task]."""
    if not text:
        return [task]
    tasks = []
    for item in text.split(","):
        try:
            seq_len, pairs = (int(part) for part in item.split(":"))
        except ValueError:
            raise EvalError(f"--train-mix entry {item!r} is not SEQ_LEN:PAIRS (e.g. 64:4)") from None
        mixed = MQARTask(seq_len, pairs, task.vocab_size, task.power_a)
        try:
            mixed.validate()
        except EvalError as error:
            raise EvalError(f"--train-mix entry {item!r}: {error}") from None
        tasks.append(mixed)
    return tasks


def train_one(architecture: str, width: int, lr: float, task: MQARTask, settings: RunSettings, num_heads: int,
              device: torch.device, test_set: tuple[torch.Tensor, torch.Tensor], progress=None,
              train_tasks: list[MQARTask] | None = None) -> dict:
    """Train one model on fresh examples every step (AdamW, warm-up then cosine decay to 0, bf16 autocast on
    CUDA) and return its row: the best test accuracy seen at the evaluations, the final one, steps and time.

    train_tasks: the steps cycle through these (default: [task]); each step has the tokens of batch_size
    examples of `task`, so a task with shorter sequences gets more of them. Easier tasks in the mix (fewer
    pairs, shorter sequences) give a learning signal long before the full task does, as in Zoology's
    training mixtures."""
    from deltanet.models import DeltaNetForCausalLM
    from deltanet.train.schedule import warmup_cosine
    from deltanet.train.trainer import make_optimizer

    torch.manual_seed(settings.seed)
    config = model_config(architecture, width, num_heads, task)
    model = DeltaNetForCausalLM(config).to(device).train()
    optimizer = make_optimizer(model, lr, settings.weight_decay, (0.9, 0.98), device)
    warmup = max(1, int(settings.warmup_fraction * settings.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda index: warmup_cosine(index + 1, settings.steps, warmup, 0.0))
    use_bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # Training data from its own generator on the device: the test set's seed is never drawn from.
    generator = torch.Generator(device=device).manual_seed(settings.seed + 1)
    start = time.perf_counter()
    history, best, step, loss_value, diverged = [], 0.0, 0, float("nan"), False
    train_tasks = train_tasks or [task]
    for step in range(1, settings.steps + 1):
        step_task = train_tasks[(step - 1) % len(train_tasks)]
        examples = max(1, settings.batch_size * task.seq_len // step_task.seq_len)
        inputs, targets = make_examples(step_task, examples, generator, device)
        with autocast():
            logits, answers = scored_logits(model, inputs, targets, per_row=step_task.num_kv_pairs)
        loss = F.cross_entropy(logits.float(), answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % settings.eval_every == 0 or step == settings.steps:
            loss_value = loss.item()
            if not math.isfinite(loss_value):  # the run diverged: its row says so, the next run goes on
                diverged = True
                if progress is not None:
                    progress(f"{architecture} d={width} lr={lr:g}: loss {loss_value} at step {step}, stopped")
                break
            acc = accuracy(model, *test_set, batch_size=max(settings.batch_size, 256), autocast=autocast)
            best = max(best, acc)
            history.append({"step": step, "loss": loss_value, "test_accuracy": acc})
            if progress is not None:
                progress(f"{architecture} d={width} lr={lr:g}: step {step}, loss {loss_value:.3f}, "
                         f"test accuracy {acc:.4f}")
            if acc >= settings.stop_at:
                break
            if settings.time_limit and time.perf_counter() - start > settings.time_limit:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "model": architecture, "dim": width, "heads": num_heads, "lr": lr, "steps": step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": loss_value, "diverged": diverged,
        "test_accuracy": 0.0 if diverged or not history else history[-1]["test_accuracy"],
        "best_test_accuracy": best, "seconds": time.perf_counter() - start, "history": history,
    }


def row_heads(row: dict) -> int:
    """A row's heads per layer (rows from before heads were recorded used the default, 2)."""
    return row.get("heads", 2)


def run_label(row: dict, several_heads: bool) -> str:
    """The table's name of a row's model: with its head count when the rows have several."""
    heads = row_heads(row)
    return f"{row['model']}, {heads} head{'s' if heads != 1 else ''}" if several_heads else row["model"]


def best_rows(rows: list[dict]) -> list[dict]:
    """The row of the best learning rate (by final test accuracy) for each (model, heads, dim), in input
    order."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["model"], row_heads(row), row["dim"])
        if key not in best or row["test_accuracy"] > best[key]["test_accuracy"]:
            best[key] = row
    return list(best.values())


def format_table(rows: list[dict]) -> str:
    """Accuracy of each model (rows; one per head count when the rows have several) at each width
    (columns), the best learning rate's."""
    dims = sorted({row["dim"] for row in rows})
    several_heads = len({row_heads(row) for row in rows}) > 1
    models = list(dict.fromkeys(run_label(row, several_heads) for row in rows))
    by_key = {(run_label(row, several_heads), row["dim"]): row for row in best_rows(rows)}
    lines = ["| model | " + " | ".join(f"d={d}" for d in dims) + " |", "|---|" + "---|" * len(dims)]
    for model in models:
        cells = []
        for d in dims:
            row = by_key.get((model, d))
            ending = ", diverged" if row is not None and row.get("diverged") else ""
            cells.append("" if row is None else f"{100 * row['test_accuracy']:.1f}% (lr {row['lr']:g}, "
                         f"{row['steps']} steps{ending})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    task, run = MQARTask(), RunSettings()
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME",
                        help=f"architectures, 2 layers each: {', '.join(ARCHITECTURES)} (default: "
                        f"{' '.join(DEFAULT_MODELS)}); -conv: with the short convolution")
    parser.add_argument("--dims", nargs="+", type=int, default=[64, 128], metavar="D",
                        help="model widths (default: 64 128)")
    parser.add_argument("--heads", type=int, default=2, help="heads per layer (default: 2)")
    parser.add_argument("--seq-len", type=int, default=task.seq_len, help=f"tokens per example (default: "
                        f"{task.seq_len})")
    parser.add_argument("--kv-pairs", type=int, default=task.num_kv_pairs,
                        help=f"key-value pairs per example, each queried once (default: {task.num_kv_pairs})")
    parser.add_argument("--vocab", type=int, default=task.vocab_size,
                        help=f"vocabulary: keys from its lower half, values from its upper half (default: "
                        f"{task.vocab_size})")
    parser.add_argument("--power-a", type=float, default=task.power_a,
                        help=f"query distances are drawn with weight d^(a-1) (default: {task.power_a})")
    parser.add_argument("--train-mix", default=DEFAULT_MIX, metavar="T:P,...",
                        help="training tasks as SEQ_LEN:PAIRS, one per step in turn, each step the tokens of "
                        "--batch-size full examples; the test is always --seq-len/--kv-pairs; '' trains on "
                        f"the test task alone (default: {DEFAULT_MIX})")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3], metavar="LR",
                        help="peak learning rates to try per model and width; the table shows the best "
                        "(default: 1e-3 3e-3)")
    parser.add_argument("--steps", type=int, default=run.steps,
                        help=f"training steps, fresh examples each (default: {run.steps}; DeltaNet without "
                        "the convolution needed 45K at the paper's setting, d=128: docs/results.md)")
    parser.add_argument("--batch-size", type=int, default=run.batch_size,
                        help=f"examples per step (default: {run.batch_size})")
    parser.add_argument("--test-examples", type=int, default=run.test_examples,
                        help=f"fixed test examples, the same for every model (default: {run.test_examples})")
    parser.add_argument("--eval-every", type=int, default=run.eval_every,
                        help=f"steps between test evaluations (default: {run.eval_every})")
    parser.add_argument("--stop-at", type=float, default=run.stop_at,
                        help="stop a run early once its test accuracy reaches this (default: 1.0, only a "
                        "perfect score)")
    parser.add_argument("--time-limit", type=float, default=run.time_limit, metavar="SECONDS",
                        help="end a run at its first evaluation after this many seconds of training; the "
                        "table says how many steps it had (default: 0, no limit)")
    parser.add_argument("--seed", type=int, default=run.seed, help=f"seed (default: {run.seed})")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", metavar="DIR",
                        help="folder for results.jsonl (one line per run, appended: several processes may "
                        "share it) and table.md")
    parser.add_argument("--report-only", action="store_true",
                        help="print and write the table of the runs in --out/results.jsonl, train nothing")


def report(out: Path) -> str:
    """The table of every run in out/results.jsonl, written to out/table.md."""
    path = out / "results.jsonl"
    if not path.is_file():
        raise EvalError(f"--report-only: no {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(row, dict) and {"model", "dim", "lr", "steps", "test_accuracy"} <= set(row):
            rows.append(row)
        elif row is not None:
            raise EvalError(f"{path}:{number} is not a row of deltanet eval mqar")
    if not rows:
        raise EvalError(f"--report-only: no complete rows in {path}")
    table = format_table(rows)
    (out / "table.md").write_text(table + "\n")
    return table


def run(args: argparse.Namespace) -> int:
    from deltanet.eval.loading import resolve_device

    if args.report_only:
        if not args.out:
            raise EvalError("--report-only needs --out DIR")
        print(report(Path(args.out)))
        return 0
    task = MQARTask(args.seq_len, args.kv_pairs, args.vocab, args.power_a)
    task.validate()
    settings = RunSettings(steps=args.steps, batch_size=args.batch_size, test_examples=args.test_examples,
                           eval_every=args.eval_every, stop_at=args.stop_at, time_limit=args.time_limit,
                           seed=args.seed)
    for name, value in (("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--test-examples", args.test_examples), ("--eval-every", args.eval_every),
                        ("--heads", args.heads)):
        if value < 1:
            raise EvalError(f"{name} must be at least 1, got {value}")
    if not all(math.isfinite(lr) and lr > 0 for lr in args.lrs):
        raise EvalError(f"--lrs must be positive, got {args.lrs}")
    train_tasks = parse_mix(args.train_mix, task)
    for architecture in args.models:
        for width in args.dims:
            model_config(architecture, width, args.heads, task)  # refuse bad names and widths before any run
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu" and task.seq_len * settings.batch_size * settings.steps > 1e8:
        print("note: this is a GPU-sized run (hours on a CPU); a CPU-sized one: --seq-len 48 --kv-pairs 12 "
              "--vocab 64 --train-mix 16:2,32:6,48:12 --dims 32 --steps 600 --batch-size 64 --lrs 1e-2",
              file=sys.stderr, flush=True)
    test_set = make_examples(task, settings.test_examples, torch.Generator().manual_seed(12345), device)
    print(f"# MQAR: T={task.seq_len}, {task.num_kv_pairs} pairs, vocabulary {task.vocab_size}, "
          f"{settings.steps} steps of {settings.batch_size}, {settings.test_examples} test examples, "
          f"{device}",
          flush=True)
    rows = []
    for architecture in args.models:
        for width in args.dims:
            for lr in args.lrs:
                row = train_one(architecture, width, lr, task, settings, args.heads, device, test_set,
                                progress=lambda message: print("  " + message, flush=True),
                                train_tasks=train_tasks)
                row["train_mix"] = args.train_mix
                row["task"] = asdict(task)
                row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
                rows.append(row)
                print(f"{architecture} d={width} lr={lr:g}: test accuracy {row['test_accuracy']:.4f} after "
                      f"{row['steps']} steps ({row['seconds']:.0f} s)", flush=True)
                if out is not None:
                    with open(out / "results.jsonl", "a") as file:
                        file.write(json.dumps(row) + "\n")
    print(report(out) if out is not None else format_table(rows))
    return 0
