"""GPU check of the model-level kernels (RMSNorm, gated RMSNorm, L2 norm, short conv, q/k/v features, SwiGLU,
cross-entropy)
at a 340M model's sizes: the Triton path's error against float64, beside the PyTorch path's in the same dtype
(the Triton path must be no worse than 2x the PyTorch path, flash-attention's rule), and both paths' times.

Run on a GPU: PYTHONPATH=src python benchmarks/check_model_ops.py [--only NAME] [--qkv-dz-dtype input]
(exit code 1 if a check fails)
"""

from __future__ import annotations

import argparse
import sys

import torch
from triton.testing import do_bench

from deltanet.ops import causal_conv1d, cross_entropy, l2_normalize, qkv_features, rms_norm, swiglu


def rel(a, e):
    a, e = a.double(), e.double()
    return ((a - e).norm() / e.norm()).item()


def cases(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device="cuda", generator=g)).to(dtype)

    tokens, hidden, heads, head_dim, inner, mlp, vocab = 16384, 1024, 8, 128, 1024, 2816, 32000
    w = 1 + 0.1 * torch.randn(hidden, device="cuda", generator=g)
    wh = 1 + 0.1 * torch.randn(head_dim, device="cuda", generator=g)
    conv_w = 0.5 * torch.randn(3 * inner, 4, device="cuda", generator=g)
    targets = torch.randint(0, vocab, (tokens,), device="cuda", generator=g)
    return {
        "rms_norm 16384x1024": (lambda x, w, b: rms_norm(x, w, backend=b),
                                [randn(tokens, hidden, scale=3), w]),
        "gated rms_norm heads": (lambda x, w, gt, b: rms_norm(x, w, gate=gt, backend=b),
                                 [randn(tokens, heads, head_dim), wh, randn(tokens, heads, head_dim)]),
        "l2_normalize heads": (lambda x, b: l2_normalize(x, backend=b), [randn(tokens, heads, head_dim)]),
        "conv+silu 8x2048x3072": (lambda x, w, b: causal_conv1d(x, w, activation="silu", backend=b),
                                  [randn(8, 2048, 3 * inner), conv_w]),
        # q, k, v stacked into one output so that the harness below sees one tensor (the stack is timed too)
        "qkv_features 8x2048x3072": (lambda x, w, b: torch.stack(qkv_features(x, w, heads, backend=b)),
                                     [randn(8, 2048, 3 * inner), conv_w]),
        "swiglu 16384x2816": (lambda a, c, b: swiglu(a, c, backend=b),
                              [randn(tokens, mlp), randn(tokens, mlp)]),
        "cross_entropy 16384x32000": (lambda x, b: cross_entropy(x, targets, backend=b),
                                      [randn(tokens, vocab, scale=4)]),
    }


def run(fn, inputs, backend, dy):
    """Outputs and gradients for the output gradient dy (the same values for every run of a case)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves, backend)
    grads = torch.autograd.grad(out, leaves, dy.to(out.dtype))
    return [out, *grads]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="only the cases whose name contains this text")
    parser.add_argument("--qkv-dz-dtype", choices=["float32", "input"], default=None,
                        help="qkv_features' backward: dz in float32 or the input's dtype (default: LAUNCH's)")
    args = parser.parse_args(argv)
    if args.qkv_dz_dtype:
        from deltanet.ops.triton import qkv_features as qkv_kernels

        qkv_kernels.LAUNCH["bwd"] = {**qkv_kernels.LAUNCH["bwd"], "dz_dtype": args.qkv_dz_dtype}
    ok = True
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for name, (fn, inputs) in cases(dtype).items():
            if args.only not in name:
                continue
            with torch.no_grad():
                shape = fn(*inputs, "torch").shape
            dy = torch.randn(shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
            dy = dy.to(dtype)  # rounded once, then used by every run, the float64 reference included
            ref = run(fn, [t.double() for t in inputs], "torch", dy)
            errs = {}
            for backend in ("torch", "triton"):
                outs = run(fn, inputs, backend, dy)
                errs[backend] = max(rel(a, e) for a, e in zip(outs, ref))
            fine = errs["triton"] <= 2 * errs["torch"] + 1e-6
            ok &= fine

            def fwd_bwd(backend):
                leaves = [t.detach().requires_grad_() for t in inputs]
                out = fn(*leaves, backend)
                out.backward(torch.ones_like(out))

            times = {b: do_bench(lambda b=b: fwd_bwd(b), warmup=5, rep=30) for b in ("torch", "triton")}
            rows.append((str(dtype).replace("torch.", ""), name, errs["torch"], errs["triton"],
                         times["torch"], times["triton"], "ok" if fine else "WORSE"))
            print(rows[-1], flush=True)
    print(f"\n{torch.cuda.get_device_name()}")
    print(f"{'dtype':<9} {'op':<28} {'err torch':>10} {'err triton':>10} {'ms torch':>9} {'ms triton':>9}")
    for dt, name, et, er, tt, tr, verdict in rows:
        print(f"{dt:<9} {name:<28} {et:>10.2e} {er:>10.2e} {tt:>9.3f} {tr:>9.3f} {verdict}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
