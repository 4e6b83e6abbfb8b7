"""Time the fused q/k/v feature kernels (conv + SiLU + L2 norm of q and k) at the 340M model's shape, for
several tile settings, beside the separate ops they replace (three causal_conv1d and two l2_normalize).

Each setting: the forward launch and the backward (both launches and the dw sum) alone (`do_bench`
medians), and the bandwidth on the bytes they must move. The backward's settings are checked against the
default's results. The "separate ops" baseline feeds chunk views of one [B, T, 3HD] tensor to the three
convs (a copy each that the old layer, with three projections, did not make).
Results of 2026-11-27 (H100) are in ops/triton/qkv_features.py beside LAUNCH.
Run on a GPU: PYTHONPATH=src python benchmarks/sweep_qkv_features.py [--shape 8x2048x8x128]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from triton.testing import do_bench

from deltanet.ops import causal_conv1d, l2_normalize, qkv_features
from deltanet.ops.triton import qkv_features as kernels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8x2048x8x128", help="B x T x H x D (default 8x2048x8x128)")
    args = parser.parse_args(argv)
    B, T, H, D = (int(s) for s in args.shape.split("x"))
    C = 3 * H * D
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, T, C, device="cuda", generator=g).to(torch.bfloat16)
    weight = 0.5 * torch.randn(C, 4, device="cuda", generator=g)
    grads = [torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3)]
    n = B * T * C
    moved = {"fwd": 2 * n * 2, "bwd": 2 * n * 2 + n * 4 + n * 4 + 2 * n * 2}  # x, y | x, g, dz, dz, x, dx
    print(f"{torch.cuda.get_device_name()}: B={B} T={T} H={H} D={D} bf16, W=4")

    def separate():
        leaves = [x.detach().requires_grad_(), weight.detach().requires_grad_()]
        parts = [causal_conv1d(p, w, activation="silu").view(B, T, H, D)
                 for p, w in zip(leaves[0].chunk(3, -1), leaves[1].chunk(3, 0))]
        outs = [l2_normalize(parts[0]), l2_normalize(parts[1]), parts[2]]
        torch.autograd.backward(outs, grads)

    def fused():
        leaves = [x.detach().requires_grad_(), weight.detach().requires_grad_()]
        torch.autograd.backward(list(qkv_features(*leaves, H)), grads)

    print(f"forward+backward through autograd: separate ops {1e3 * do_bench(separate):.1f} us, "
          f"fused {1e3 * do_bench(fused):.1f} us", flush=True)
    default = {name: dict(settings) for name, settings in kernels.LAUNCH.items()}
    references = {}  # the default tiles' dx, dw for each dz dtype
    for dz_dtype in ("float32", "input"):
        kernels.LAUNCH["bwd"] = {**default["bwd"], "dz_dtype": dz_dtype}
        references[dz_dtype] = kernels.qkv_features_bwd_launch(x, weight, None, H, True, 1e-6, *grads)
    kernels.LAUNCH.update(default)
    print(f"{'launch':<20} {'block_t':>7} {'warps':>5} {'us':>8} {'TB/s':>6}")
    for block_t, warps in itertools.product((16, 32, 64), (2, 4, 8)):
        kernels.LAUNCH["fwd"] = {"block_t": block_t, "num_warps": warps}
        t_fwd = do_bench(lambda: kernels.qkv_features_fwd_launch(x, weight, None, H, True, 1e-6))
        print(f"{'fwd':<20} {block_t:>7} {warps:>5} {1e3 * t_fwd:>8.1f} {moved['fwd'] / t_fwd / 1e9:>6.2f}",
              flush=True)
    kernels.LAUNCH.update(default)
    best = (float("inf"), None)
    for dz_dtype, block_t, warps in itertools.product(("float32", "input"), (16, 32, 64), (2, 4, 8)):
        kernels.LAUNCH["bwd"] = {"block_t": block_t, "num_warps": warps, "dz_dtype": dz_dtype}
        t_bwd = do_bench(lambda: kernels.qkv_features_bwd_launch(x, weight, None, H, True, 1e-6, *grads))
        dx, dw = kernels.qkv_features_bwd_launch(x, weight, None, H, True, 1e-6, *grads)
        reference = references[dz_dtype]  # the same arithmetic per element: dx bit for bit
        same = torch.equal(dx, reference[0]) and torch.allclose(dw, reference[1], rtol=1e-4, atol=1e-3)
        best = min(best, (t_bwd, ("bwd", dz_dtype, block_t, warps)))
        moved_bwd = moved["bwd"] - (4 * n if dz_dtype == "input" else 0)
        print(f"{'bwd dz ' + dz_dtype:<20} {block_t:>7} {warps:>5} {1e3 * t_bwd:>8.1f} "
              f"{moved_bwd / t_bwd / 1e9:>6.2f}" + ("" if same else "  DIFFERS"), flush=True)
    kernels.LAUNCH.update(default)
    kernels.LAUNCH["bwd"] = {**default["bwd"], "dz_dtype": "input"}
    for block_t, block_c, warps in itertools.product((32, 64), (64, 128), (4, 8)):
        kernels.LAUNCH["dx"] = {"block_t": block_t, "block_c": block_c, "num_warps": warps}
        t_bwd = do_bench(lambda: kernels.qkv_features_bwd_launch(x, weight, None, H, True, 1e-6, *grads))
        best = min(best, (t_bwd, ("dx tiles, dz bf16", block_t, block_c, warps)))
        print(f"bwd (dz bf16), dx tiles {block_t}x{block_c}, {warps} warps: {1e3 * t_bwd:.1f} us", flush=True)
    kernels.LAUNCH.update(default)
    print(f"fastest backward: {best[1]} {1e3 * best[0]:.1f} us")


if __name__ == "__main__":
    main()
