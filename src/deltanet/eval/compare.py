"""Language-modelling comparison of architectures at equal size and tokens: DeltaNet, Transformer++, linear
attention and DeltaNet's two hybrids, each trained by `deltanet train` with the same settings and data, then
a table of held-out loss and bits per byte and a plot of the loss curves.

Each architecture runs as its own `deltanet train` process in OUT/<architecture>/ (metrics.jsonl, log.txt,
checkpoints), spread over the GPUs given (--gpus; several runs may share one with --runs-per-gpu).
SIGTERM or Ctrl-C stops every run with a checkpoint and makes the table of what they reached. With
--report-only the table (OUT/results.md, OUT/results.json) and the plot (OUT/loss_curves.png) are made
from the runs already in OUT. The held-out rows are the same for every architecture: the same data, split
and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from deltanet.eval.errors import EvalError
from deltanet.train.processes import GPU_HOST_THREADS

ARCHITECTURES = ["deltanet", "transformer++", "linear-attn", "deltanet-swa", "deltanet-global"]
# The settings every run shares, as `deltanet train` options (see `deltanet train --help`)
DEFAULT_SETTINGS = {"seq_len": 2048, "batch_size": 32, "steps": 3000, "lr": 1e-3, "weight_decay": 0.1,
                    "warmup_steps": 150, "min_lr_ratio": 0.1, "eval_interval": 500, "eval_rows": 256,
                    "log_interval": 25, "checkpoint_interval": 1000, "keep_checkpoints": 1,
                    "sample_tokens": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder of the runs, the table and the plot")
    parser.add_argument("--architectures", nargs="+", default=ARCHITECTURES, metavar="NAME",
                        help=f"architectures to train (default: {' '.join(ARCHITECTURES)})")
    parser.add_argument("--size", default="small", help="preset size of every model (default: small, ~27M "
                        "parameters; see deltanet.models.presets)")
    parser.add_argument("--data", nargs="+", default=["site-packages"], metavar="SOURCE",
                        help="training text, as `deltanet train --data` (default: site-packages, this "
                        "Python's installed packages' .py files: the default run's ~200M tokens would read "
                        "stdlib's 10-30 MB many times over, and the models would memorise it)")
    for name, value in DEFAULT_SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=value,
                            help=f"`deltanet train {flag}` of every run (default: {value})")
    parser.add_argument("--compile", action="store_true", help="train with torch.compile (default: off)")
    parser.add_argument("--gpus", nargs="*", metavar="N",
                        help="CUDA devices to spread the runs over (default: every visible one; none: one "
                        "run after another on the default device)")
    parser.add_argument("--runs-per-gpu", type=int, default=1,
                        help="runs sharing one GPU at a time (default: 1)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs in OUT from their latest checkpoints (a run without one "
                        "starts)")
    parser.add_argument("--report-only", action="store_true", help="only make the table and plot from OUT")


def train_command(architecture: str, args: argparse.Namespace, out_dir: Path, gpu: str | None = None
                  ) -> list[str]:
    """The `deltanet train` command line of one architecture's run (on the one GPU it sees, if `gpu`)."""
    command = [sys.executable, "-m", "deltanet", "train", "--model", f"{architecture}-{args.size}",
               "--out-dir", str(out_dir), "--data", *args.data, "--no-progress", "--no-tensorboard"]
    for name in DEFAULT_SETTINGS:
        command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.compile:
        command.append("--compile")
    if gpu is not None:
        command += ["--device", "cuda"]  # never a silent fall-back to the CPU
    if args.resume and any((out_dir / "checkpoints").glob("step-*")):
        command.append("--resume")
    return command


def visible_gpus() -> list[str]:
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def run_all(args: argparse.Namespace, out: Path) -> dict[str, int]:
    """Train every architecture, `runs_per_gpu` at a time on each GPU; -> exit status of each run."""
    gpus = args.gpus if args.gpus is not None else visible_gpus()
    # GPUs interleaved, so that the first runs start on different GPUs
    lanes = [gpu for _ in range(args.runs_per_gpu) for gpu in gpus] or [None]
    pending = list(args.architectures)
    statuses: dict[str, int] = {}
    running: list[subprocess.Popen] = []
    lock = threading.Lock()

    def lane(gpu: str | None) -> None:
        while True:
            with lock:
                if not pending or stopping.is_set():
                    return
                architecture = pending.pop(0)
            run_dir = out / architecture
            run_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            # A share of the cores each; on a GPU at most `deltanet train`'s own cap: runs that each took one
            # thread per core fought over the cores in every CPU-side op: ~7x slower steps (docs/results.md).
            share = max(1, (os.cpu_count() or 1) // len(lanes))
            env.setdefault("OMP_NUM_THREADS", str(share if gpu is None else min(share, GPU_HOST_THREADS)))
            command = train_command(architecture, args, run_dir, gpu)
            (run_dir / "command.txt").write_text(" ".join(command) + "\n")
            where = f" on GPU {gpu}" if gpu else ""
            print(f"[{time.strftime('%H:%M:%S')}] {architecture}: started{where}", flush=True)
            with open(run_dir / "log.txt", "a" if args.resume else "w") as log:
                with lock:
                    if stopping.is_set():  # stop() ran while this run was being set up: do not start it
                        return
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                    running.append(process)
                status = process.wait()
            statuses[architecture] = status
            print(f"[{time.strftime('%H:%M:%S')}] {architecture}: exit status {status}", flush=True)

    # SIGTERM or Ctrl-C: each run gets SIGTERM (it writes a checkpoint and stops), no new run starts, and the
    # table is made of what the runs reached.
    stopping = threading.Event()

    def stop(signum, frame) -> None:
        stopping.set()
        with lock:
            for process in running:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    threads = [threading.Thread(target=lane, args=(gpu,)) for gpu in lanes]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping.is_set():
        print("stopped: the runs were asked to checkpoint and stop; the table shows what they reached",
              file=sys.stderr)
    return statuses


def read_run(run_dir: Path) -> dict | None:
    """The training and held-out records of one run folder (metrics.jsonl), or None if it has none."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    train, valid = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        (train if record.get("split") == "train" else valid).append(record)
    if not train:
        return None
    # each train record: the tokens so far and the tokens/s of the window since the previous record
    seconds = sum((record["tokens"] - previous["tokens"]) / record["tokens_per_s"]
                  for previous, record in zip([{"tokens": 0}] + train[:-1], train)
                  if record["tokens_per_s"] > 0)
    return {"architecture": run_dir.name, "steps": train[-1]["step"], "tokens": train[-1]["tokens"],
            "tokens_per_s": train[-1]["tokens"] / seconds if seconds else None, "train": train,
            "valid": valid}


def parameters(architecture: str, size: str) -> int:
    """Parameters of the preset `architecture-size` (built on the meta device: no memory, no time)."""
    import torch

    from deltanet.models import DeltaNetForCausalLM, preset_config

    with torch.device("meta"):
        model = DeltaNetForCausalLM(preset_config(f"{architecture}-{size}"))
    return sum(p.numel() for p in model.parameters())


def common_valid_step(rows: list[dict]) -> int | None:
    """The last step at which every run was evaluated on the held-out rows: the runs share the batch size,
    so there they have seen the same tokens (a run stopped early is compared where the others were)."""
    steps = set.intersection(*({r["step"] for r in row["valid"]} for row in rows))
    return max(steps) if steps else None


def data_passes(train: list[dict], tokens: int) -> float | None:
    """How many times `tokens` read the training text, from the `epoch` (passes completed) of the train
    records: the first pass ended between the last record before `epoch` first grew and the first after,
    taken as their midpoint (to within half a log interval; a jump of several passes in one interval is
    shared out; records that start past the first pass, from a resumed run, give a rougher estimate).
    0.0: the first pass had not ended by the last record; None: no record has `epoch` (runs from before it
    was logged)."""
    records = [r for r in train if "epoch" in r]
    if not records:
        return None
    if records[0]["epoch"] > 0:  # a run resumed after the field appeared, past its first pass
        return tokens / (records[0]["tokens"] / (records[0]["epoch"] + 0.5))
    for before, after in zip(records, records[1:]):
        if after["epoch"] > before["epoch"]:
            first_pass = (before["tokens"] + after["tokens"]) / 2 / after["epoch"]
            return tokens / first_pass
    return 0.0


def summarize(rows: list[dict], size: str) -> tuple[list[dict], int | None]:
    """One line per run: parameters, the held-out loss and bits per byte at the common step, the tokens
    there and how many passes over the training text they were, and the run's lowest held-out bits per byte
    with its tokens; -> (lines sorted by bits per byte at the common step, the common step)."""
    step = common_valid_step(rows)
    lines = []
    for row in rows:
        tokens_per_step = row["tokens"] // row["steps"]  # every step trains on the same batch shape
        line = {"architecture": row["architecture"], "parameters": parameters(row["architecture"], size),
                "steps_trained": row["steps"], "tokens_trained": row["tokens"],
                "tokens_per_s": row["tokens_per_s"]}
        if step is not None:
            valid = next(r for r in row["valid"] if r["step"] == step)
            line.update(step=step, tokens=step * tokens_per_step, valid_loss=valid["loss"],
                        valid_bits_per_byte=valid["bits_per_byte"],
                        data_passes=data_passes(row["train"], step * tokens_per_step))
        if row["valid"]:
            best = min(row["valid"], key=lambda r: r["bits_per_byte"])
            line.update(lowest_bits_per_byte=best["bits_per_byte"],
                        lowest_at_tokens=best["step"] * tokens_per_step)
        lines.append(line)
    lines.sort(key=lambda line: line.get("valid_bits_per_byte", float("inf")))
    return lines, step


def format_table(lines: list[dict]) -> str:
    header = ("| architecture | parameters | held-out bits per byte | held-out loss (nats/token) | "
              "at tokens | passes over the training text | lowest held-out bits per byte (at tokens) | "
              "trained tokens | tokens/s |")
    table = [header, "|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        def cell(key: str, spec: str) -> str:
            return "-" if line.get(key) is None else format(line[key], spec)

        def millions(key: str) -> str:
            return "-" if line.get(key) is None else f"{line[key] / 1e6:.1f}M"

        passes = line.get("data_passes")
        passes = "-" if passes is None else "< 1" if passes == 0 else f"{passes:.1f}"
        lowest = ("-" if line.get("lowest_bits_per_byte") is None else
                  f"{line['lowest_bits_per_byte']:.4f} ({millions('lowest_at_tokens')})")
        table.append(f"| {line['architecture']} | {line['parameters'] / 1e6:.1f}M | "
                     f"{cell('valid_bits_per_byte', '.4f')} | {cell('valid_loss', '.4f')} | "
                     f"{millions('tokens')} | {passes} | {lowest} | {millions('tokens_trained')} | "
                     f"{cell('tokens_per_s', ',.0f')} |")
    if any((line.get("data_passes") or 0) > 1 for line in lines):
        table.append("")
        table.append("The runs read their training text more than once: past its lowest point, held-out loss "
                     "measures memorisation as much as modelling. A larger --data gives a comparison without "
                     "repeats.")
    return "\n".join(table)


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """Training loss against tokens (cut where the shortest run ended) and held-out bits per byte at each
    evaluation, one colour per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shortest = min(row["tokens"] for row in rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        train = [r for r in row["train"] if r["tokens"] <= shortest]
        line, = left.plot([r["tokens"] / 1e6 for r in train], [r["loss"] for r in train],
                          label=row["architecture"], lw=1)
        tokens_at = {r["step"]: r["tokens"] for r in row["train"]}
        points = [(tokens_at[r["step"]] / 1e6, r["bits_per_byte"]) for r in row["valid"]
                  if r["step"] in tokens_at]
        right.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=line.get_color(),
                   label=row["architecture"])
    left.set_xlabel("training tokens (M)")
    left.set_ylabel("training loss (nats per token)")
    left.set_ylim(top=min(3.0, left.get_ylim()[1]))
    right.set_xlabel("training tokens (M)")
    right.set_ylabel("held-out bits per byte")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, architectures: list[str], size: str) -> list[dict]:
    """Write out/results.md, out/results.json and out/loss_curves.png from the runs in `out`; -> the lines."""
    rows = [row for row in (read_run(out / name) for name in architectures) if row is not None]
    if not rows:
        raise EvalError(f"no runs with metrics in {out} (looked for {', '.join(architectures)})")
    lines, step = summarize(rows, size)
    table = format_table(lines)
    if step is None:
        table += "\n\n(no held-out evaluation at a step that every run reached)"
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"summary": lines, "runs": rows}, indent=1))
    try:
        plot_curves(rows, out / "loss_curves.png", f"{out.name}: {size} models, same data and batches")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", flush=True)
    return lines


def run(args: argparse.Namespace) -> int:
    from deltanet.models.presets import ARCHITECTURES as PRESET_ARCHITECTURES
    from deltanet.models.presets import SIZES

    unknown = [name for name in args.architectures if name not in PRESET_ARCHITECTURES]
    if unknown:
        raise EvalError(f"unknown --architectures {unknown}; choose from {', '.join(PRESET_ARCHITECTURES)}")
    if args.size not in SIZES:
        raise EvalError(f"unknown --size {args.size!r}; choose from {', '.join(SIZES)}")
    if args.runs_per_gpu < 1:
        raise EvalError(f"--runs-per-gpu must be at least 1, got {args.runs_per_gpu}")
    if args.gpus and not args.report_only:
        visible = visible_gpus()
        unknown = [gpu for gpu in args.gpus if gpu not in visible]
        if unknown:
            raise EvalError(f"--gpus {' '.join(unknown)}: this machine has CUDA devices "
                            f"{' '.join(visible) or '(none)'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    if not args.report_only:
        statuses = run_all(args, out)
        failed = {name: code for name, code in statuses.items() if code != 0}
        if failed:
            print(f"failed runs (see OUT/<architecture>/log.txt): {failed}", file=sys.stderr)
            status = 1
        if set(statuses) != set(args.architectures):
            status = 1
    report(out, args.architectures, args.size)
    return status
