"""Sweep the Triton kernels' launch settings (warps, block sizes) on the GPU; print the best per kernel.

Run: PYTHONPATH=src python benchmarks/sweep_launch.py [--out DIR] [--only wy,state]
Times each launch alone (do_bench median) at the benchmark's long-batch and long-sequence shapes and the
340M model's shape; the wy rows include the inverse by 16 x 16 diagonal blocks (common.LAUNCH["wy"]).
"""

import itertools
import json
import math
import os
import sys

import torch
from triton.testing import do_bench

from deltanet.benchmarks.kernels import make_inputs
from deltanet.ops.triton import chunk as tc
from deltanet.ops.triton.backward import chunk_bwd
from deltanet.ops.triton.common import LAUNCH
from deltanet.ops.triton.output import output_fwd
from deltanet.ops.triton.state import state_bwd, state_fwd
from deltanet.ops.triton.wy import wy_fwd

GRID = {
    "wy": {"num_warps": [4, 8], "block_v": [32, 64], "inverse": ["doubling", "blocks16"]},
    "state": {"num_warps": [4, 8], "block_v": [32, 64]},
    "output": {"num_warps": [4, 8], "block_v": [32, 64]},
    "bwd_direct": {"num_warps": [4, 8], "block_v": [32, 64], "block_k": [64, 128]},
    "bwd_through_wy": {"num_warps": [4, 8], "block_v": [32, 64]},
}


def setup(B, T, H, D, C=64, prec="tf32"):
    q, k, v, beta = (t.detach() for t in make_inputs(B, T, H, D))  # the benchmark's bf16 inputs
    do = torch.randn_like(v)
    ns, nc, ci, co = tc._plan(q, None, C)
    w, u, a = wy_fwd(k, v, beta, None, ci, nc, T, C, prec, store_a_inv=True)
    _, h, ut, _ = state_fwd(k, w, u, None, False, None, co, ns, nc, T, C, prec)
    dh, dut, _ = state_bwd(q, k, w, do, None, False, D**-0.5, None, co, ns, nc, T, C, prec)
    s = D**-0.5
    recomputed = lambda: dict(w=w, u=u, a_inv=a, h=h, u_tilde=ut, dh=dh, du_tilde=dut)  # noqa: E731
    return {
        "wy": lambda: wy_fwd(k, v, beta, None, ci, nc, T, C, prec, store_a_inv=True),
        "state": lambda: (state_fwd(k, w, u, None, False, None, co, ns, nc, T, C, prec),
                          state_bwd(q, k, w, do, None, False, s, None, co, ns, nc, T, C, prec)),
        "output": lambda: output_fwd(q, k, h, ut, s, None, ci, nc, T, C, prec, v.dtype),
        "bwd_direct": lambda: chunk_bwd(q, k, v, beta, do, recomputed(), s, None, ci, nc, T, C, prec),
        "bwd_through_wy": lambda: chunk_bwd(q, k, v, beta, do, recomputed(), s, None, ci, nc, T, C, prec),
    }


def main():
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else os.environ.get("OUT", ".")
    # the kernel benchmark's long-batch and long-sequence shapes, and the 340M model's (H=8)
    shapes = [(8, 2048, 16, 128), (1, 32768, 16, 128), (8, 2048, 8, 128)]
    fns = {shape: setup(*shape) for shape in shapes}
    default = {name: dict(cfg) for name, cfg in LAUNCH.items()}
    results, best = [], {}
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else list(GRID)
    for name, grid in GRID.items():
        if name not in only:
            continue
        keys = list(grid)
        scored = []
        for values in itertools.product(*grid.values()):
            cfg = dict(zip(keys, values))
            LAUNCH[name] = {**default[name], **cfg}
            try:
                times = [do_bench(fns[shape][name], warmup=5, rep=30, return_mode="median")
                         for shape in shapes]
            except Exception as e:  # a setting that does not compile (shared memory) is skipped
                print(f"{name} {cfg}: {type(e).__name__} {str(e)[:80]}", flush=True)
                continue
            gm = math.exp(sum(map(math.log, times)) / len(times))
            results.append({"kernel": name, "config": cfg, "ms": times})
            scored.append((gm, cfg, times))
            print(f"{name:<15} {cfg} " + " ".join(f"{t:.3f}" for t in times), flush=True)
        LAUNCH[name] = default[name]
        gm, cfg, times = min(scored, key=lambda x: x[0])
        best[name] = {"config": cfg, "ms": times}
    with open(os.path.join(out, "sweep.json"), "w") as f:
        json.dump({"card": torch.cuda.get_device_name(), "shapes": shapes, "results": results, "best": best},
                  f, indent=1)
    print("\nbest (ms at", shapes, ")")
    for name, b in best.items():
        print(f"{name:<15} {b['config']} " + " ".join(f"{t:.3f}" for t in b["ms"]))
    print("(bwd_direct and bwd_through_wy time both backward launches; each sweeps its own settings)")


if __name__ == "__main__":
    main()
