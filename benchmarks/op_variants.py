"""Time the delta-rule op's variants side by side on the GPU: what the forward saves for the backward
(LAUNCH["backward"]["saved"]) and how the wy launch inverts (LAUNCH["wy"]["inverse"]).

Run: PYTHONPATH=src python benchmarks/op_variants.py [--out DIR]
For each shape: forward (inference, under no_grad) and forward+backward (median ms, through autograd as a
model calls it, so the forward saves what the variant saves), peak memory of forward+backward, and the
largest difference of any output or gradient from the first variant's (0 where the arithmetic is the same).
The 2026-11-27 run (H100, docs/kernels.md v4) named these four default / blocks16 / saved / saved+blocks16,
in this order. Flash attention (SDPA) at the same shape is the reference row that the 340M model's attention
layers pay.
"""

import json
import os
import sys

import torch

from deltanet.benchmarks.kernels import _timed, implementations, make_inputs, sdpa
from deltanet.benchmarks.model import launch_settings

# Each variant spelled out in full (the first is the baseline of the ratios): independent of the defaults.
VARIANTS = {
    "inputs+doubling": ["backward.saved=inputs", "wy.inverse=doubling"],
    "inputs+blocks16": ["backward.saved=inputs", "wy.inverse=blocks16"],
    "intermediates+doubling": ["backward.saved=intermediates", "wy.inverse=doubling"],
    "intermediates+blocks16": ["backward.saved=intermediates", "wy.inverse=blocks16"],
}
SHAPES = [(8, 2048, 8, 128), (8, 2048, 16, 128), (2, 8192, 16, 128), (1, 32768, 16, 128)]


def outputs(fn, inputs, grad_out):
    for t in inputs:
        t.grad = None
    o = fn(*inputs)
    torch.autograd.backward(o, grad_out)
    return [o.detach().clone()] + [t.grad.clone() for t in inputs]


def main():
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else os.environ.get("OUT", ".")
    op = implementations(include_fla=False)["deltanet"]
    rows = []
    for shape in SHAPES:
        inputs = make_inputs(*shape)
        grad_out = torch.randn_like(inputs[2])
        reference = None
        for name, settings in VARIANTS.items():
            with launch_settings(settings):  # the tables as they were afterwards
                results = outputs(op, inputs, grad_out)
                fwd, fb, peak = _timed(op, inputs, grad_out)
            reference = reference or results
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(results, reference))
            rows.append(dict(shape=shape, variant=name, fwd_ms=fwd, fwd_bwd_ms=fb, peak_gib=peak / 2**30,
                             max_diff_from_default=diff))
            print(f"{str(shape):<22} {name:<16} fwd {fwd:.3f}  f+b {fb:.3f}  peak {peak / 2**30:.2f} GiB  "
                  f"diff {diff:.2e}", flush=True)
        fwd, fb, peak = _timed(sdpa, inputs, grad_out.transpose(1, 2))
        rows.append(dict(shape=shape, variant="flash attention (SDPA)", fwd_ms=fwd, fwd_bwd_ms=fb,
                         peak_gib=peak / 2**30))
        print(f"{str(shape):<22} {'SDPA flash':<16} fwd {fwd:.3f}  f+b {fb:.3f}  peak {peak / 2**30:.2f} GiB",
              flush=True)
    with open(os.path.join(out, "op_variants.json"), "w") as f:
        json.dump({"card": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    print("\n| shape | variant | fwd ms | f+b ms | f+b vs default | peak GiB |\n|---|---|---|---|---|---|")
    base = {}
    for row in rows:
        key = tuple(row["shape"])
        base.setdefault(key, row["fwd_bwd_ms"])
        print(f"| {row['shape']} | {row['variant']} | {row['fwd_ms']:.3f} | {row['fwd_bwd_ms']:.3f} | "
              f"{base[key] / row['fwd_bwd_ms']:.2f}x | {row['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
