"""Time one DeltaNet layer of the 340M model (hidden 1024, 8 heads of 128), forward+backward under bf16
autocast, with and without the layer-level fusions that are switches, side by side in one process: beta's
projection in the q|k|v matmul (`LinearRecurrentMixer.fuse_extra_projections`), against b_proj called on its
own. (A variant with `qkv_features`' backward in one launch was measured on an H100 and dropped: see
ops/triton/qkv_features.py beside LAUNCH.)

Each variant: median ms of forward+backward (`do_bench`; at this size the layer is bound by the GPU, ~4 ms),
and the largest relative difference of the output and of the input's and weights' gradients from the first
variant (bf16: a few 1e-3 is rounding; a wrong fusion is O(1)).

Run on a GPU: PYTHONPATH=src python benchmarks/layer_variants.py [--shape 8x2048] [--out DIR]
CPU smoke test (torch backend): --device cpu --shape 1x64
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from deltanet.benchmarks.model import launch_settings
from deltanet.layers import DeltaNet
from deltanet.layers.sequence_info import SequenceInfo

# name -> settings as the model benchmark's rows take them (launch_settings: mixer switches, launch tables)
VARIANTS = {
    "separate beta": ["mixer.fuse_extra_projections=False"],
    "fused beta": ["mixer.fuse_extra_projections=True"],
}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8x2048", help="batch x sequence length (default 8x2048)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for layer_variants.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, seq_len = (int(s) for s in args.shape.split("x"))
    torch.manual_seed(0)
    layer = DeltaNet(1024, 8, 128, layer_idx=0).to(device)
    x = torch.randn(batch, seq_len, 1024, device=device, requires_grad=True)
    grad_out = torch.randn(batch, seq_len, 1024, device=device)
    info = SequenceInfo.contiguous(batch, seq_len, device)
    leaves = [x, *layer.parameters()]

    def forward_backward():
        for t in leaves:
            t.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = layer(x, info)
        out.backward(grad_out.to(out.dtype))
        return [out.detach(), *(t.grad for t in leaves)]

    if device.type == "cuda":
        from triton.testing import do_bench

        def timed():
            return do_bench(forward_backward, warmup=10, rep=50, return_mode="median")
    else:
        import time

        def timed():
            forward_backward()
            start = time.perf_counter()
            forward_backward()
            return 1e3 * (time.perf_counter() - start)

    rows, reference = [], None
    for name, settings in VARIANTS.items():
        with launch_settings(settings):  # the switches and tables as they were afterwards
            try:
                results = forward_backward()
            except Exception as error:  # reported and skipped: the other variants still run
                print(f"{name:<40} failed: {type(error).__name__} {str(error)[:100]}", flush=True)
                continue
            ms = timed()
        reference = reference or results
        diff = max(relative_difference(a, b) for a, b in zip(results, reference))
        rows.append({"variant": name, "ms": ms, "max_relative_difference": diff})
        print(f"{name:<40} {ms:8.3f} ms  diff {diff:.1e}", flush=True)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "layer_variants.json"), "w") as file:
        json.dump({"card": card, "shape": [batch, seq_len], "rows": rows}, file, indent=1)
    print(f"\n{card}, one DeltaNet layer (1024 wide, 8 heads of 128), {batch} x {seq_len}, bf16 autocast")
    print("| variant | f+b ms | vs first | max rel. diff |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['ms']:.3f} | {rows[0]['ms'] / row['ms']:.3f}x | "
              f"{row['max_relative_difference']:.1e} |")


if __name__ == "__main__":
    main()
