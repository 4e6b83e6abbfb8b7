"""Time the short-conv kernels at the 340M model's shape for several tile settings (GPU).

Each launch alone (`do_bench` median) and its achieved bandwidth (bytes each kernel must move over the
time): forward (read x, write y), dz (read x and dy, write float32 dz), dx and dw (read dz and x, write
dx). On 2026-11-27 the op's forward+backward over [8, 2048, 3072] bf16 took 0.86 ms on an H100, about 2.5x
its memory time: this finds which launch is slow and which tiles fix it.

Run: PYTHONPATH=src python benchmarks/sweep_conv.py [--shape 8x2048x1024]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from triton.testing import do_bench

from deltanet.ops.triton import short_conv


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8x2048x1024",
                        help="B x T x C (default 8x2048x1024: one of q, k, v of the 340M model)")
    args = parser.parse_args(argv)
    B, T, C = (int(s) for s in args.shape.split("x"))
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, T, C, device="cuda", generator=g).to(torch.bfloat16)
    dy = torch.randn(B, T, C, device="cuda", generator=g).to(torch.bfloat16)
    weight = torch.randn(C, 4, device="cuda", generator=g)
    n = B * T * C
    moved = {"fwd": 2 * n * 2, "dz": 2 * n * 2 + n * 4, "dx": n * 4 + 2 * n * 2}  # bytes each launch moves
    reference_dx, reference_dw = short_conv.short_conv_bwd(x, weight, None, True, dy)
    print(f"{torch.cuda.get_device_name()}: B={B} T={T} C={C} bf16, W=4, SiLU")
    print(f"{'launch':<6} {'block_t':>7} {'block_c':>7} {'warps':>5} {'us':>8} {'TB/s':>6}")
    default = {name: dict(settings) for name, settings in short_conv.LAUNCH.items()}
    for block_t, block_c, warps in itertools.product((16, 32, 64), (64, 128, 256), (4, 8)):
        short_conv.LAUNCH["fwd"] = short_conv.LAUNCH["bwd"] = {
            "block_t": block_t, "block_c": block_c, "num_warps": warps,
        }
        times = {
            "fwd": do_bench(lambda: short_conv.short_conv_fwd(x, weight, None, True)),
            "bwd": do_bench(lambda: short_conv.short_conv_bwd(x, weight, None, True, dy)),
        }
        dx, dw = short_conv.short_conv_bwd(x, weight, None, True, dy)
        same = torch.equal(dx, reference_dx) and torch.allclose(dw, reference_dw, rtol=1e-5, atol=1e-3)
        print(f"{'fwd':<6} {block_t:>7} {block_c:>7} {warps:>5} {1e3 * times['fwd']:>8.1f} "
              f"{moved['fwd'] / times['fwd'] / 1e9:>6.2f}")
        print(f"{'bwd':<6} {block_t:>7} {block_c:>7} {warps:>5} {1e3 * times['bwd']:>8.1f} "
              f"{(moved['dz'] + moved['dx']) / times['bwd'] / 1e9:>6.2f}" + ("" if same else "  DIFFERS"),
              flush=True)
    short_conv.LAUNCH.update(default)


if __name__ == "__main__":
    main()
