"""GPU benchmark of the delta-rule kernels, side by side in one process on one card.

Compares this project's Triton chunk kernels with flash-linear-attention's `chunk_delta_rule` (fla-core,
imported only if installed: it is never a dependency), PyTorch SDPA causal attention (flash backend) and
the token-by-token path. Times are `triton.testing.do_bench` medians of forward and forward+backward; peak
memory is the CUDA allocator's peak during forward+backward above what the inputs already held.

FLOP formula (matrix products only, per head and chunk of C tokens, key dim K, value dim V):
    forward  = 2 C (3 C K + 2 C V + 3 K V)
        (A = beta K K^T; W = T K; U = T V; W S; K^T U~; Q S; Q K^T; tril(Q K^T) U~)
    forward+backward = 3 x forward (the usual convention that a backward costs two forwards).
Attention's FLOPs: 4 T^2 D / 2 per head forward (causal), 2.5x that for forward+backward.
Bytes floor: q, k, v read once and o written once, 2 bytes each (bf16), and beta.
Roofline fraction = max(FLOPs / measured bf16 matmul rate, bytes / measured copy bandwidth) / time.

Run on a GPU: `python -m deltanet.benchmarks.kernels --out results/` (prints a table, writes JSON and a plot).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os

import torch
import torch.nn.functional as F

from deltanet.ops import chunk_delta_rule, recurrent_delta_rule

SHAPES = [  # (B, T, H, D)
    (8, 2048, 16, 128),
    (4, 4096, 16, 128),
    (2, 8192, 16, 128),
    (1, 16384, 16, 128),
    (1, 32768, 16, 128),
    (8, 2048, 8, 64),
]
VARLEN_LENGTHS = [3000, 517, 8192, 64, 1, 4095, 2048, 7000, 33, 7818]  # mixed, sums to 32768


def delta_flops(T_total: int, H: int, K: int, V: int, C: int = 64) -> float:
    chunks = math.ceil(T_total / C)
    return chunks * H * 2 * C * (3 * C * K + 2 * C * V + 3 * K * V)


def measure_ceilings():
    """Measured bf16 matmul rate (FLOP/s) and device-to-device copy bandwidth (bytes/s, read + write)."""
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    flops = 2 * 8192**3 / (ms * 1e-3)
    x = torch.randn(2**28, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=100, rep=500, return_mode="median")
    bandwidth = 2 * x.numel() * 2 / (ms * 1e-3)
    return flops, bandwidth


def make_inputs(B, T, H, D, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, T, H, D, device="cuda", generator=g).to(dtype)
    k = F.normalize(torch.randn(B, T, H, D, device="cuda", generator=g), dim=-1).to(dtype)
    v = torch.randn(B, T, H, D, device="cuda", generator=g).to(dtype)
    beta = torch.rand(B, T, H, device="cuda", generator=g).to(dtype)
    return [t.requires_grad_() for t in (q, k, v, beta)]


def _timed(fn, inputs, grad_out, forward_only=False):
    from triton.testing import do_bench

    def fwd():
        with torch.no_grad():
            fn(*inputs)

    if forward_only:
        return do_bench(fwd, warmup=5, rep=50, return_mode="median"), float("nan"), float("nan")

    def fwd_bwd():
        o = fn(*inputs)
        torch.autograd.backward(o, grad_out)

    fwd_ms = do_bench(fwd, warmup=25, rep=100, return_mode="median")
    fb_ms = do_bench(fwd_bwd, warmup=25, rep=100, grad_to_none=inputs, return_mode="median")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    for t in inputs:
        t.grad = None
    return fwd_ms, fb_ms, peak


def implementations(include_fla: bool):
    def deltanet(q, k, v, b, cu=None):
        return chunk_delta_rule(q, k, v, b, cu_seqlens=cu, backend="triton")[0]

    impls = {"deltanet": deltanet}
    if include_fla:
        try:
            from fla.ops.delta_rule import chunk_delta_rule as fla_chunk_delta_rule

            impls["fla"] = lambda q, k, v, b, cu=None: fla_chunk_delta_rule(q, k, v, b, cu_seqlens=cu)[0]
        except ImportError as e:
            print(f"fla-core not importable ({e}); benchmarking without it")
    return impls


def sdpa(q, k, v, b=None, cu=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True)


def run(shapes=SHAPES, include_fla=True, include_sdpa=True, varlen=True, only=None):
    matmul_rate, bandwidth = measure_ceilings()
    card = torch.cuda.get_device_name()
    print(f"# {card}, {datetime.date.today()}: bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s, "
          f"copy {bandwidth / 1e12:.2f} TB/s")
    impls = implementations(include_fla)
    rows = []
    cases = [(B, T, H, D, None) for B, T, H, D in shapes]
    if varlen:
        cases.append((1, sum(VARLEN_LENGTHS), 16, 128, VARLEN_LENGTHS))
    if only is not None:
        cases = [cases[i] for i in only]
    for B, T, H, D, lengths in cases:
        inputs = make_inputs(B, T, H, D)
        cu = None
        if lengths is not None:
            cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
        grad_out = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
        flops = delta_flops(B * T, H, D, D)
        nbytes = B * T * H * (4 * D * 2 + 2)
        floor_s = max(flops / matmul_rate, nbytes / bandwidth)
        shape_name = f"B={B} T={T} H={H} D={D}" + (" varlen" if cu is not None else "")
        print(shape_name, flush=True)
        for name, fn in impls.items():
            fwd_ms, fb_ms, peak = _timed(lambda q, k, v, b: fn(q, k, v, b, cu), inputs, grad_out)
            rows.append(dict(shape=shape_name, B=B, T=T, H=H, D=D, varlen=cu is not None, impl=name,
                             fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, peak_mem_gib=peak / 2**30,
                             fwd_tflops=flops / fwd_ms / 1e9, fwd_roofline=floor_s * 1e3 / fwd_ms,
                             fwd_bwd_tflops=3 * flops / fb_ms / 1e9))
            print(f"  {name:<11} fwd {fwd_ms:.3f} ms  f+b {fb_ms:.3f} ms  peak {peak / 2**30:.2f} GiB",
                  flush=True)

        # The token-by-token kernel (decoding path; forward only): whole sequence, then one step.
        def recurrent(q, k, v, b):
            return recurrent_delta_rule(q, k, v, b, cu_seqlens=cu, backend="triton")[0]

        fwd_ms, _, _ = _timed(recurrent, inputs, grad_out, forward_only=True)
        rows.append(dict(shape=shape_name, B=B, T=T, H=H, D=D, varlen=cu is not None, impl="recurrent",
                         fwd_ms=fwd_ms, fwd_bwd_ms=float("nan"), peak_mem_gib=float("nan"),
                         fwd_tflops=flops / fwd_ms / 1e9, fwd_roofline=floor_s * 1e3 / fwd_ms,
                         fwd_bwd_tflops=float("nan")))
        print(f"  recurrent   fwd {fwd_ms:.3f} ms", flush=True)
        if include_sdpa and cu is None:
            fwd_ms, fb_ms, peak = _timed(sdpa, inputs, grad_out.transpose(1, 2))
            att_flops = B * H * 2 * T * T * D  # causal: half of 4 T^2 D
            rows.append(dict(shape=shape_name, B=B, T=T, H=H, D=D, varlen=False, impl="sdpa_flash",
                             fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, peak_mem_gib=peak / 2**30,
                             fwd_tflops=att_flops / fwd_ms / 1e9, fwd_roofline=float("nan"),
                             fwd_bwd_tflops=2.5 * att_flops / fb_ms / 1e9))
        del inputs, grad_out
        torch.cuda.empty_cache()
    return {"card": card, "date": str(datetime.date.today()), "matmul_tflops": matmul_rate / 1e12,
            "copy_tbps": bandwidth / 1e12, "rows": rows}


def print_table(result):
    rows = result["rows"]
    print(f"\n{'shape':<32} {'impl':<11} {'fwd ms':>8} {'f+b ms':>8} {'peak GiB':>9} {'fwd TF/s':>9} "
          f"{'roofline':>9}")
    for r in rows:
        print(f"{r['shape']:<32} {r['impl']:<11} {r['fwd_ms']:>8.3f} {r['fwd_bwd_ms']:>8.3f} "
              f"{r['peak_mem_gib']:>9.2f} {r['fwd_tflops']:>9.1f} {r['fwd_roofline']:>9.2f}")
    by_shape = {}
    for r in rows:
        by_shape.setdefault(r["shape"], {})[r["impl"]] = r
    ratios = [(s, d["fla"]["fwd_ms"] / d["deltanet"]["fwd_ms"],
               d["fla"]["fwd_bwd_ms"] / d["deltanet"]["fwd_bwd_ms"],
               d["deltanet"]["peak_mem_gib"] / max(d["fla"]["peak_mem_gib"], 1e-9))
              for s, d in by_shape.items() if "fla" in d and "deltanet" in d]
    if ratios:
        print(f"\n{'shape':<32} {'fwd speed-up':>13} {'f+b speed-up':>13} {'mem ratio':>10}   "
              "(vs fla; >1 = faster)")
        for s, f, fb, m in ratios:
            print(f"{s:<32} {f:>12.2f}x {fb:>12.2f}x {m:>10.2f}")

        def gm(xs):
            return math.exp(sum(map(math.log, xs)) / len(xs))

        print(f"{'geometric mean':<32} {gm([r[1] for r in ratios]):>12.2f}x "
              f"{gm([r[2] for r in ratios]):>12.2f}x")


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = 0
    for impl in sorted({r["impl"] for r in result["rows"]}):
        # Fixed-length H=16 rows with a forward+backward time (the recurrent kernel has none: NaN).
        pts = sorted((r["T"], r["fwd_bwd_ms"]) for r in result["rows"]
                     if r["impl"] == impl and r["H"] == 16 and not r["varlen"] and r["fwd_bwd_ms"] > 0)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
            plotted += 1
    if not plotted:  # e.g. --only with the packed batch alone: nothing to draw against T
        plt.close(fig)
        return
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (B*T = 16384 up to T=16384; H=16, D=128, bf16)")
    ax.set_ylabel("forward+backward ms")
    ax.set_title(f"{result['card']}, {result['date']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_results"),
                        help="folder for JSON and plot")
    parser.add_argument("--no-fla", action="store_true", help="skip flash-linear-attention even if installed")
    parser.add_argument("--no-sdpa", action="store_true", help="skip SDPA attention")
    parser.add_argument("--only", type=int, nargs="+", metavar="I",
                        help="run only these cases (0-based: the shapes in order, then the varlen batch)")
    args = parser.parse_args(argv)
    result = run(include_fla=not args.no_fla, include_sdpa=not args.no_sdpa, only=args.only)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(result, f, indent=1)
    try:
        plot(result, os.path.join(args.out, "kernels.png"))
    except ImportError:
        print("matplotlib not installed: no plot")
    print_table(result)
    print_decode_step()


def print_decode_step():
    """One generated token per sequence against a cached state: the decoding step's latency."""
    from triton.testing import do_bench

    print("\ndecode step (1 token, state in place), bf16 H=16 K=V=128")
    for B in (1, 8, 64):
        q, k, v, beta = (t.detach() for t in make_inputs(B, 1, 16, 128))
        state = torch.zeros(B, 16, 128, 128, device="cuda")
        ms = do_bench(lambda: recurrent_delta_rule(q, k, v, beta, initial_state=state, backend="triton",
                                                   update_state_in_place=True), warmup=10, rep=100,
                      return_mode="median")
        print(f"  B={B:<3} {ms * 1e3:8.1f} us   "
              f"(state read+write {2 * state.numel() * 4 / ms / 1e9:.2f} TB/s)")


if __name__ == "__main__":
    main()
