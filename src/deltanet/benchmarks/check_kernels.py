"""GPU correctness check of the Triton kernels at realistic sizes, against a float64 reference.

The reference is the PyTorch chunked path in float64 on the same (already rounded) inputs, which the CPU
tests tie to the token-by-token recurrence. Every uninitialised allocation is filled with NaN
(torch.utils.deterministic.fill_uninitialized_memory), so an element a kernel forgets to write shows up.
If fla-core is installed, its bf16 errors on the same inputs are printed beside ours.

Error measures: norm = ||x - ref|| / ||ref||, max = max|x - ref| / max|ref|.
Run: `python -m deltanet.benchmarks.check_kernels` (exit code 1 if a bound is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from deltanet.ops import chunk_delta_rule

NAMES = ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0")


def errors(actual, expected):
    a, e = actual.double(), expected.double()
    return {"norm": ((a - e).norm() / e.norm()).item(), "max": ((a - e).abs().max() / e.abs().max()).item(),
            "finite": bool(torch.isfinite(actual).all())}


def run_case(fn, q, k, v, beta, h0, cu, do, dht):
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v, beta, h0)]
    o, ht = fn(*inputs, cu)
    grads = torch.autograd.grad([o, ht], inputs, [do, dht])
    return [o, ht, *grads]


def make_case(B, T, H, K, V, dtype, seed, lengths=None):
    g = torch.Generator(device="cuda").manual_seed(seed)
    N = B if lengths is None else len(lengths)
    q = torch.randn(B, T, H, K, device="cuda", generator=g).to(dtype)
    k = F.normalize(torch.randn(B, T, H, K, device="cuda", generator=g), dim=-1).to(dtype)
    v = torch.randn(B, T, H, V, device="cuda", generator=g).to(dtype)
    beta = torch.rand(B, T, H, device="cuda", generator=g).to(dtype)
    h0 = torch.randn(N, H, K, V, device="cuda", generator=g)
    do = torch.randn(B, T, H, V, device="cuda", generator=g).to(dtype)
    dht = torch.randn(N, H, K, V, device="cuda", generator=g)
    cu = None if lengths is None else torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    return q, k, v, beta, h0, cu, do, dht


def ours(allow_tf32=True):
    return lambda q, k, v, b, h0, cu: chunk_delta_rule(
        q, k, v, b, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend="triton",
        allow_tf32=allow_tf32)


def reference(q, k, v, b, h0, cu):
    return chunk_delta_rule(q.double(), k.double(), v.double(), b.double(), initial_state=h0.double(),
                            output_final_state=True, cu_seqlens=cu, backend="torch")


def fla_fn():
    try:
        from fla.ops.delta_rule import chunk_delta_rule as fla_chunk
    except ImportError:
        return None
    return lambda q, k, v, b, h0, cu: fla_chunk(q, k, v, b, initial_state=h0, output_final_state=True,
                                                cu_seqlens=cu)


# Bounds on the norm-wise error of each output and gradient. float32 cases: the kernel issue's bars (1e-3 with
# tf32, 1e-5 in full float32). bf16/fp16 cases: None, i.e. no absolute bound; the first bf16 case is also
# run through fla-core (if installed) and ours must be within FLA_SLACK times fla's error on every quantity.
FLA_SLACK = 1.25
CASES = [  # name, (B, T, H, K, V), dtype, lengths, allow_tf32, bound, compare with fla
    ("bf16 B=2 T=4096 H=16 D=128", (2, 4096, 16, 128, 128), torch.bfloat16, None, True, None, True),
    ("bf16 varlen K=64 V=96", (1, 5000, 4, 64, 96), torch.bfloat16, [1, 1000, 63, 65, 2871, 1000], True, None,
     False),
    ("fp16 B=2 T=1000 H=4 D=64", (2, 1000, 4, 64, 64), torch.float16, None, True, None, False),
    ("fp32 tf32 B=2 T=2048 H=4 D=128", (2, 2048, 4, 128, 128), torch.float32, None, True, 1e-3, False),
    ("bf16 K=V=256", (1, 1000, 2, 256, 256), torch.bfloat16, None, True, None, False),
    # allow_tf32=False: float32 accuracy from three tf32 products per product (tf32x3).
    ("fp32 tf32x3 B=2 T=2048 H=4 D=128", (2, 2048, 4, 128, 128), torch.float32, None, False, 1e-5, False),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "check_results"))
    parser.add_argument("--cases", nargs="+", default=None, metavar="TEXT",
                        help="only the cases whose name contains one of these texts (default: all)")
    parser.add_argument("--skip-long", action="store_true", help="skip the T=65536 finiteness check")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.cases is None or any(text in c[0] for text in args.cases)]
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    fla = fla_fn()
    results, ok = [], True
    long_finite = None
    if not args.skip_long:  # long sequence: finite output and state
        q, k, v, beta, h0, cu, do, dht = make_case(1, 65536, 4, 128, 128, torch.bfloat16, seed=99)
        o, ht = ours()(q, k, v, beta, h0, cu)
        long_finite = bool(torch.isfinite(o).all() and torch.isfinite(ht).all())
        ok &= long_finite
        print(f"T=65536 bf16 finite: {long_finite}", flush=True)
    start = time.time()
    for name, (B, T, H, K, V), dtype, lengths, allow_tf32, bound, with_fla in cases:
        print(f"[{time.time() - start:5.0f} s] {name} ...", flush=True)
        case = make_case(B, T, H, K, V, dtype, seed=len(results), lengths=lengths)
        ref = run_case(reference, *case)
        impls = {"deltanet": ours(allow_tf32=allow_tf32)}
        if fla is not None and with_fla:  # one case only: fla's autotuning makes each new shape slow
            impls["fla"] = fla
        for impl, fn in impls.items():
            try:
                out = run_case(fn, *case)
            except Exception as e:  # fla refuses some shapes; ours must not
                print(f"{name} {impl}: {type(e).__name__}: {str(e)[:200]}")
                ok &= impl != "deltanet"
                continue
            errs = {n: errors(a, r) for n, a, r in zip(NAMES, out, ref)}
            results.append({"case": name, "impl": impl, "errors": errs})
            print(f"  {impl:<9} " + " ".join(f"{n} {e['norm']:.1e}" for n, e in errs.items()), flush=True)
            finite = all(e["finite"] for e in errs.values())
            ok &= finite or impl != "deltanet"
            if bound is not None and impl == "deltanet":
                ok &= all(e["norm"] <= bound for e in errs.values())
            if impl == "fla":  # ours ran first on the same inputs
                mine = results[-2]["errors"]
                worse = [n for n in NAMES if mine[n]["norm"] > FLA_SLACK * errs[n]["norm"]]
                if worse:
                    print(f"  less accurate than fla (> {FLA_SLACK}x) on: {', '.join(worse)}")
                ok &= not worse
    print(f"\n{'case':<34} {'impl':<9} " + " ".join(f"{n:>11}" for n in NAMES) + "   (norm rel. error)")
    for r in results:
        cells = " ".join(f"{r['errors'][n]['norm']:>11.2e}" + ("" if r["errors"][n]["finite"] else "!")
                         for n in NAMES)
        print(f"{r['case']:<34} {r['impl']:<9} {cells}")
    print(f"T=65536 bf16 finite: {long_finite}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "check.json"), "w") as f:
        json.dump({"results": results, "long_finite": long_finite, "card": torch.cuda.get_device_name()}, f,
                  indent=1)
    print("CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
