"""Time each Triton launch of chunk_delta_rule separately (GPU), to see where the time goes.

Run: PYTHONPATH=src python benchmarks/profile_stages.py
"""

import sys
import time

import torch
from triton.testing import do_bench

from deltanet.benchmarks.kernels import make_inputs
from deltanet.ops.triton import chunk as tc
from deltanet.ops.triton.backward import chunk_bwd
from deltanet.ops.triton.output import output_fwd
from deltanet.ops.triton.state import state_bwd, state_fwd
from deltanet.ops.triton.wy import wy_fwd


def bench(fn):
    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def stages(B, T, H, D, C=64, prec="tf32", lengths=None):
    """Median ms of each launch alone; lengths: a packed batch (B must be 1) with these sequence lengths."""
    q, k, v, beta = (t.detach() for t in make_inputs(B, T, H, D))  # the benchmark's bf16 inputs
    do = torch.randn_like(v)
    cu = None if lengths is None else torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    num_seqs, nc, ci, co = tc._plan(q, cu, C)
    s = D**-0.5

    def wy(store=False):
        return wy_fwd(k, v, beta, cu, ci, nc, T, C, prec, store_a_inv=store)

    def states(**fused):
        return state_fwd(k, w, u, None, False, cu, co, num_seqs, nc, T, C, prec, **fused)

    def reverse():
        return state_bwd(q, k, w, do, None, False, s, cu, co, num_seqs, nc, T, C, prec)

    def recomputed():
        return dict(w=w, u=u, a_inv=a_inv, h=h, u_tilde=ut, dh=dh, du_tilde=dut)

    t0 = time.time()
    w, u, a_inv = wy(store=True)
    _, h, ut, _ = states()
    output_fwd(q, k, h, ut, s, cu, ci, nc, T, C, prec, v.dtype)
    dh, dut, _ = reverse()
    chunk_bwd(q, k, v, beta, do, recomputed(), s, cu, ci, nc, T, C, prec)
    torch.cuda.synchronize()
    print(f"  first call (compile) {time.time() - t0:.1f} s", flush=True)
    return {
        "wy_fwd": bench(wy),
        "state_fwd": bench(states),
        "output_fwd": bench(lambda: output_fwd(q, k, h, ut, s, cu, ci, nc, T, C, prec, v.dtype)),
        "state+output fused": bench(lambda: states(q=q, scale=s, out_dtype=v.dtype)),
        "state_bwd": bench(reverse),
        "chunk_bwd": bench(lambda: chunk_bwd(q, k, v, beta, do, recomputed(), s, cu, ci, nc, T, C, prec)),
    }


if __name__ == "__main__":
    from deltanet.benchmarks.kernels import VARLEN_LENGTHS

    cases = [((8, 2048, 16, 128), None), ((1, 32768, 16, 128), None), ((8, 2048, 8, 64), None),
             ((1, sum(VARLEN_LENGTHS), 16, 128), VARLEN_LENGTHS)]
    for shape, lengths in cases:
        print(shape, "varlen" if lengths else "", flush=True)
        t = stages(*shape, lengths=lengths)
        fwd = t["wy_fwd"] + t["state_fwd"] + t["output_fwd"]
        fused = t["wy_fwd"] + t["state+output fused"]
        bwd = t["wy_fwd"] + t["state_fwd"] + t["state_bwd"] + t["chunk_bwd"]
        print("  " + "  ".join(f"{k} {v:.3f}" for k, v in t.items())
              + f"\n  | fwd {fwd:.3f} ms unfused, {fused:.3f} fused; bwd {bwd:.3f} incl. recompute",
              flush=True)
    from deltanet.ops.triton import backward, output, state, wy

    for fn in (wy.wy_fwd_kernel, state.state_fwd_kernel, output.output_kernel, state.state_bwd_kernel,
               backward.bwd_direct_kernel, backward.bwd_through_wy_kernel):
        try:
            for cache in fn.device_caches.values():
                for kernel in cache[0].values():
                    print(f"  {fn.__name__}: regs {kernel.n_regs} spills {kernel.n_spills}", flush=True)
        except Exception as e:  # the cache layout is Triton-internal
            print(f"  {fn.__name__}: no register report ({type(e).__name__})")
    sys.exit(0)
