"""Where a `deltanet train` step's time goes: the trainer's own step (packed rows, optimizer, everything),
timed with the GPU synchronised, then two steps under torch.profiler.

Prints one line per run: step time, tokens/s, the GPU's busy time per step (sum of kernel times) and the
host's share; then the top host ops by self CPU time, and writes a Chrome trace to --out.

    PYTHONPATH=src python3 benchmarks/profile_train_step.py --model deltanet-small --batch-size 24 \
        --seq-len 2048 --out /tmp/prof [--compile] [--data FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from deltanet.train.config import TrainConfig
from deltanet.train.processes import start_processes
from deltanet.train.trainer import Trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deltanet-small")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--data", nargs="+", default=["stdlib"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = args.label or args.model + ("-compiled" if args.compile else "")
    run_dir = Path("/tmp/profile_train_step") / label
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(model=args.model, batch_size=args.batch_size, seq_len=args.seq_len, data=args.data,
                         steps=args.warmup + args.steps + 10, out_dir=str(run_dir), log_interval=10 ** 6,
                         eval_interval=0, checkpoint_interval=10 ** 6, progress=False, compile=args.compile,
                         device=args.device)
    procs = start_processes(config.device)
    device = procs.device
    started = time.perf_counter()
    trainer = Trainer(config, procs, sys.stdout)
    setup_s = time.perf_counter() - started

    started = time.perf_counter()
    for step in range(1, args.warmup + 1):
        trainer._step(step)
    synchronize(device)
    warmup_s = time.perf_counter() - started

    started = time.perf_counter()
    host_s = 0.0
    for step in range(args.warmup + 1, args.warmup + args.steps + 1):
        before = time.perf_counter()
        trainer._step(step)
        host_s += time.perf_counter() - before  # time until _step returns: the host's issue time
    synchronize(device)
    step_s = (time.perf_counter() - started) / args.steps
    host_s /= args.steps
    tokens = args.batch_size * args.seq_len

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    first = args.warmup + args.steps + 1
    with profile(activities=activities, record_shapes=False) as prof:
        for step in range(first, first + 2):
            trainer._step(step)
        synchronize(device)
    events = prof.key_averages()
    # the kernels' own time (the op rows of key_averages count their kernels again)
    gpu_us = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA) / 2
    prof.export_chrome_trace(str(out / f"{label}.trace.json"))

    result = {"label": label, "model": args.model, "compile": args.compile, "data": args.data,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "setup_s": setup_s,
              "warmup_s": warmup_s, "step_ms": step_s * 1e3, "host_issue_ms": host_s * 1e3,
              "tokens_per_s": tokens / step_s, "gpu_busy_ms": gpu_us / 1e3,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch_threads": torch.get_num_threads()}
    with open(out / "profile_train_step.jsonl", "a") as file:
        file.write(json.dumps(result) + "\n")
    table = events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60)
    (out / f"{label}.cpu_ops.txt").write_text(table)
    if device.type == "cuda":
        (out / f"{label}.gpu_ops.txt").write_text(
            events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
    print(f"{label}: step {step_s * 1e3:.1f} ms ({tokens / step_s:,.0f} tokens/s); host issue "
          f"{host_s * 1e3:.1f} ms/step; GPU busy {gpu_us / 1e3:.1f} ms/step; setup {setup_s:.1f} s, "
          f"warm-up {warmup_s:.1f} s; {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
