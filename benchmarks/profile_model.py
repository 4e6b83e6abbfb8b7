"""Where a model's training step spends its time: torch.profiler over a few steps, top operators by time.

Run on a GPU:  PYTHONPATH=src python benchmarks/profile_model.py [--preset deltanet-340m] [--shape 8x2048]
               [--fla] [--top 25] [--out DIR]
CPU smoke test: python benchmarks/profile_model.py --device cpu --preset deltanet-debug --shape 1x64
--fla profiles flash-linear-attention's DeltaNetForCausalLM of the same size instead (if installed), so the
two tables can be read side by side. Writes a Chrome trace (trace.json) under --out when given.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from deltanet.benchmarks.model import fla_config_like, fla_model_class, random_tokens
from deltanet.models import DeltaNetForCausalLM, preset_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="deltanet-340m", help="model preset (default deltanet-340m)")
    parser.add_argument("--shape", default="8x2048", help="batch x sequence length (default 8x2048)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--fla", action="store_true",
                        help="profile fla's DeltaNetForCausalLM of the same size")
    parser.add_argument("--steps", type=int, default=3,
                        help="profiled steps after 2 warm-up steps (default 3)")
    parser.add_argument("--top", type=int, default=25, help="rows of the table (default 25)")
    parser.add_argument("--out", default=None, help="folder for trace.json (default: no trace)")
    parser.add_argument("--compile", action="store_true",
                        help="profile torch.compile(model, fullgraph=True, dynamic=False) (not with --fla)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, seq_len = (int(x) for x in args.shape.split("x"))
    config = preset_config(args.preset)
    with torch.device(device):
        if args.fla:
            fla = fla_model_class()
            if fla is None:
                raise SystemExit("--fla: flash-linear-attention is not importable")
            fla_config_class, fla_model, _ = fla
            model = fla_model(fla_config_like(fla_config_class, config))
        else:
            model = DeltaNetForCausalLM(config)
    if args.compile:
        if args.fla:
            raise SystemExit("--compile: fla's ops disable compilation around themselves; profile it eager")
        model = torch.compile(model, fullgraph=True, dynamic=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = random_tokens(batch, seq_len, config.vocab_size, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    mode = "fla " if args.fla else ("compiled " if args.compile else "")
    print(f"# {mode}{args.preset} {args.shape}, {args.steps} steps, {card}")
    averages = prof.key_averages()
    print(averages.table(sort_by=sort_by, row_limit=args.top, max_name_column_width=60))
    if device.type == "cuda":  # the kernels' own events (an operator's event also carries its kernels' time)
        busy_us = sum(e.self_device_time_total for e in averages if e.device_type != DeviceType.CPU)
        print(f"GPU time per step: {busy_us / args.steps / 1e3:.2f} ms ({mode}{args.preset} {args.shape})")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        prof.export_chrome_trace(os.path.join(args.out, "trace.json"))


if __name__ == "__main__":
    main()
