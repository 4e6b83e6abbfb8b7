"""Time the delta-rule kernels against the token-by-token recurrence and causal softmax attention, on one GPU.
With the defaults (sections figure and table, about 3 minutes on a fresh H100, most of it Triton compiling):
the paper's Figure 1 as kernels.png (forward and forward+backward time against the sequence length T at a
fixed number of tokens per batch), the main table with memory and roofline, and kernels.json, all with the
card's name and the date. `--device cpu` with tiny sizes is a smoke test of the PyTorch paths.

Sections (`--sections`, side by side in one process on one device):

figure  The paper's Figure 1: B*T = --tokens (16384) at each --seq-lens T (B = tokens / T; B = 1 past it),
        H = --heads, for each --head-dims D (K = V = D), bf16. Three implementations: the chunked Triton
        kernel (`chunk_delta_rule`, ours), the token-by-token form (`recurrent_delta_rule`: on CUDA its
        Triton kernel, which has no backward, so it is timed forward only; on the CPU the PyTorch loop,
        with autograd's backward) and causal softmax attention (PyTorch SDPA, flash backend).
table   The main table at SHAPES (or --table-shapes) and one packed (varlen) batch: forward and
        forward+backward ms, peak memory of forward+backward, TFLOP/s and the fraction of the roofline.
        `--fla` adds flash-linear-attention's `chunk_delta_rule` (fla-core, imported only if installed,
        never a dependency; it autotunes each new shape, which adds minutes) and a speed-up table.
decode  One generated token per sequence against a cached state (the decoding step's latency).

Times: `triton.testing.do_bench` medians on CUDA (forward under no_grad; forward+backward through autograd
with one fixed output gradient); on the CPU the median of --repeats runs after one warm-up run. Peak memory
is the CUDA allocator's peak during one forward+backward above what the inputs already held.

FLOP formulas (matrix products only, per head):
    chunked delta rule, per chunk of C tokens, key dim K, value dim V:
        forward = 2 C (3 C K + 2 C V + 3 K V)
        (A = beta K K^T; W = T K; U = T V; W S; K^T U~; Q S; Q K^T; tril(Q K^T) U~)
    recurrence, per token: forward = 6 K V (S^T k, the rank-one update, S^T q)
    causal attention, per sequence of T tokens: forward = 4 T^2 D / 2
    forward+backward = 3 x forward (the usual convention that a backward costs two forwards; 2.5x for
    attention, whose backward recomputes the scores).
Bytes floor: q, k, v read once and o written once, 2 bytes each (bf16), and beta.
Roofline fraction = max(FLOPs / measured bf16 matmul rate, bytes / measured copy bandwidth) / time.

Where it sits: a benchmark on top of deltanet.ops; `deltanet bench kernels` (deltanet.cli) and
`python -m deltanet.benchmarks.kernels` both call add_arguments and run. The command lines to run on a GPU,
their runtimes and the results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from deltanet.errors import UserError
from deltanet.ops import chunk_delta_rule, recurrent_delta_rule

SHAPES = [  # (B, T, H, D): the main table
    (8, 2048, 16, 128),
    (4, 4096, 16, 128),
    (2, 8192, 16, 128),
    (1, 16384, 16, 128),
    (1, 32768, 16, 128),
    (8, 2048, 8, 64),
]
VARLEN_LENGTHS = [3000, 517, 8192, 64, 1, 4095, 2048, 7000, 33, 7818]  # mixed, sums to 32768
FIGURE_SEQ_LENS = [512, 1024, 2048, 4096, 8192, 16384]
SECTIONS = ("figure", "table", "decode")
DECODE_BATCHES = (1, 8, 64)
CPU_SMOKE = ("--device cpu --tokens 128 --seq-lens 32 64 128 --heads 2 --head-dims 16 "
             "--table-shapes 1x64x2x16 --varlen-lengths 40 24")
# What the plot calls each implementation (on the CPU the chunked and recurrent forms run in PyTorch).
LABELS = {"deltanet": "DeltaNet chunkwise", "recurrent": "DeltaNet recurrent", "fla": "fla chunkwise",
          "sdpa_flash": "softmax attention (SDPA flash)"}


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


def make_inputs(B, T, H, D, dtype=torch.bfloat16, seed=0, device="cuda"):
    """q, k (unit-norm), v [B, T, H, D] and beta [B, T, H] in (0, 1), requiring gradients."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, T, H, D, device=device, generator=g).to(dtype)
    k = F.normalize(torch.randn(B, T, H, D, device=device, generator=g), dim=-1).to(dtype)
    v = torch.randn(B, T, H, D, device=device, generator=g).to(dtype)
    beta = torch.rand(B, T, H, device=device, generator=g).to(dtype)
    return [t.requires_grad_() for t in (q, k, v, beta)]


def _bench_ms(fn, device_type: str, warmup: int, rep: int, repeats: int, grad_to_none=None) -> float:
    """Median ms of fn(): do_bench (warmup, rep in ms) on CUDA; on the CPU one warm-up run, then `repeats`."""
    if device_type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median")
    times = []
    for _ in range(repeats + 1):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def _timed(fn, inputs, grad_out, forward_only=False, repeats=3):
    """(forward ms, forward+backward ms, peak bytes of forward+backward) of fn(*inputs); forward_only gives
    None for the last two, and so does the CPU for the peak."""
    device_type = inputs[0].device.type

    def fwd():
        with torch.no_grad():
            fn(*inputs)

    if forward_only:
        return _bench_ms(fwd, device_type, 5, 50, repeats), None, None

    def fwd_bwd():
        o = fn(*inputs)
        torch.autograd.backward(o, grad_out)

    fwd_ms = _bench_ms(fwd, device_type, 25, 100, repeats)
    fb_ms = _bench_ms(fwd_bwd, device_type, 25, 100, repeats, grad_to_none=inputs)
    peak = None
    if device_type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    for t in inputs:
        t.grad = None
    return fwd_ms, fb_ms, peak


def implementations(include_fla: bool, backend: str = "triton"):
    def deltanet(q, k, v, b, cu=None):
        return chunk_delta_rule(q, k, v, b, cu_seqlens=cu, backend=backend)[0]

    impls = {"deltanet": deltanet}
    if include_fla:
        try:
            from fla.ops.delta_rule import chunk_delta_rule as fla_chunk_delta_rule

            impls["fla"] = lambda q, k, v, b, cu=None: fla_chunk_delta_rule(q, k, v, b, cu_seqlens=cu)[0]
        # Not only ImportError: an fla built for another torch or triton can fail in many ways on import.
        except Exception as e:  # noqa: BLE001
            print(f"fla-core not importable ({type(e).__name__}: {e}); benchmarking without it", flush=True)
    return impls


def sdpa(q, k, v, b=None, cu=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True)


# --- measuring --------------------------------------------------------------------------------------------


def _is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def measure_case(B, T, H, D, lengths, device, names, chunk_impls, ceilings, repeats) -> list[dict]:
    """One row per implementation in `names` (keys of chunk_impls, "recurrent", "sdpa_flash"), in that order,
    at one shape: B sequences of T tokens, or one packed batch of `lengths`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = make_inputs(B, T, H, D, dtype=dtype, device=device)
    cu = None
    if lengths is not None:
        cu = torch.tensor([0] + list(lengths), device=device).cumsum(0).to(torch.int32)
    grad_out = torch.randn(B, T, H, D, device=device, dtype=dtype)
    flops = delta_flops(B * T, H, D, D)
    nbytes = B * T * H * (4 * D * 2 + 2)
    floor_s = max(flops / ceilings[0], nbytes / ceilings[1]) if ceilings else None
    shape_name = f"B={B} T={T} H={H} D={D}" + (" varlen" if cu is not None else "")
    print(shape_name, flush=True)
    base = dict(shape=shape_name, B=B, T=T, H=H, D=D, varlen=cu is not None)

    def row(impl, fwd_ms, fb_ms, peak, fwd_flops, fb_factor, roofline=True, note=""):
        r = dict(base, impl=impl, fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms,
                 peak_mem_gib=None if peak is None else peak / 2**30,
                 fwd_tflops=fwd_flops / fwd_ms / 1e9,
                 fwd_roofline=floor_s * 1e3 / fwd_ms if floor_s and roofline else None,
                 fwd_bwd_tflops=None if fb_ms is None else fb_factor * fwd_flops / fb_ms / 1e9, note=note)
        fb = "-" if fb_ms is None else f"{fb_ms:.3f} ms"
        mem = "" if peak is None else f"  peak {peak / 2**30:.2f} GiB"
        print(f"  {impl:<11} fwd {fwd_ms:.3f} ms  f+b {fb}{mem}{'  (' + note + ')' if note else ''}",
              flush=True)
        return r

    def failed(impl, error):
        print(f"  {impl:<11} {error}", flush=True)
        return dict(base, impl=impl, error=error)

    # The token-by-token form: on CUDA its Triton kernel (the decoding path), which has no backward.
    backend = "triton" if device.type == "cuda" else "torch"
    forward_only = backend == "triton"

    def recurrent(q, k, v, b):
        return recurrent_delta_rule(q, k, v, b, cu_seqlens=cu, backend=backend)[0]

    rows = []
    for name in names:
        if name == "recurrent":
            fwd_ms, fb_ms, peak = _timed(recurrent, inputs, grad_out, forward_only, repeats)
            note = "forward only: the Triton kernel has no backward" if forward_only else "PyTorch loop"
            rows.append(row(name, fwd_ms, fb_ms, peak, B * T * H * 6 * D * D, 3, roofline=False, note=note))
        elif name == "sdpa_flash":
            try:
                fwd_ms, fb_ms, peak = _timed(sdpa, inputs, grad_out.transpose(1, 2), repeats=repeats)
                rows.append(row(name, fwd_ms, fb_ms, peak, B * H * 2 * T * T * D, 2.5, roofline=False))
            except RuntimeError as error:  # no flash kernel for this head dim or card, or out of memory
                rows.append(failed(name, str(error).strip().splitlines()[0][:120]))
        else:
            fn = chunk_impls[name]
            try:
                fwd_ms, fb_ms, peak = _timed(lambda q, k, v, b: fn(q, k, v, b, cu), inputs, grad_out,
                                             repeats=repeats)
                rows.append(row(name, fwd_ms, fb_ms, peak, flops, 3))
            except RuntimeError as error:
                if not _is_out_of_memory(error):
                    raise
                rows.append(failed(name, "out of memory"))
    del inputs, grad_out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def figure_cases(tokens: int, seq_lens: list[int], heads: int, head_dims: list[int]) -> list[tuple]:
    """(B, T, H, D, None) at B*T = tokens; B = 1 for T >= tokens."""
    return [(max(tokens // T, 1), T, heads, D, None) for D in head_dims for T in seq_lens]


def table_cases(shapes, varlen_lengths, only) -> list[tuple]:
    """(B, T, H, D, lengths or None): the shapes, then the packed batch at the first shape's H and D."""
    cases = [(B, T, H, D, None) for B, T, H, D in shapes]
    if varlen_lengths:
        cases.append((1, sum(varlen_lengths), shapes[0][2], shapes[0][3], tuple(varlen_lengths)))
    if only is not None:
        cases = [cases[i] for i in only]
    return cases


def run_sections(args, device: torch.device) -> dict:
    """The sections asked for; a shape that the figure and the table share is measured once."""
    today = str(datetime.date.today())
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
        ceilings = measure_ceilings()
        print(f"# {card}, {today}: bf16 matmul {ceilings[0] / 1e12:.0f} TFLOP/s, "
              f"copy {ceilings[1] / 1e12:.2f} TB/s", flush=True)
    else:
        card, ceilings = platform.processor() or "cpu", None
        print(f"# {card} (CPU, PyTorch paths, float32), {today}", flush=True)
    chunk_impls = implementations(args.fla, backend="triton" if device.type == "cuda" else "torch")
    attention = [] if args.no_sdpa else ["sdpa_flash"]
    result = {"card": card, "date": today, "device": device.type, "torch": torch.__version__,
              "matmul_tflops": ceilings[0] / 1e12 if ceilings else None,
              "copy_tbps": ceilings[1] / 1e12 if ceilings else None, "tokens": args.tokens}
    measured: dict[tuple, dict] = {}  # (case, implementation) -> row

    def rows_of(cases, names):
        for case in cases:
            # attention has no packed (varlen) form here
            wanted = [name for name in names if not (name == "sdpa_flash" and case[4] is not None)]
            missing = [name for name in wanted if (case, name) not in measured]
            if missing:
                for row in measure_case(*case, device, missing, chunk_impls, ceilings, args.repeats):
                    measured[case, row["impl"]] = row
            yield from (measured[case, name] for name in wanted)

    if "figure" in args.sections:  # the paper's three implementations; fla is for the table
        cases = figure_cases(args.tokens, args.seq_lens, args.heads, args.head_dims)
        result["figure"] = list(rows_of(cases, ["deltanet", "recurrent", *attention]))
    if "table" in args.sections:
        cases = table_cases(args.table_shapes, args.varlen_lengths, args.only)
        result["rows"] = list(rows_of(cases, [*chunk_impls, "recurrent", *attention]))
    if "decode" in args.sections:
        result["decode"] = decode_step(device, args.heads, args.head_dims, args.repeats)
    return result


def decode_step(device, heads, head_dims, repeats) -> list[dict]:
    """One generated token per sequence against a cached state: the decoding step's latency (on CUDA the
    Triton kernel updating the state in place; on the CPU the PyTorch loop)."""
    backend = "triton" if device.type == "cuda" else "torch"
    rows = []
    for D in head_dims:
        where = "Triton, state updated in place" if backend == "triton" else "PyTorch loop, new state"
        print(f"\ndecode step (1 token; {where}), H={heads} K=V={D}", flush=True)
        for B in DECODE_BATCHES:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            q, k, v, beta = (t.detach() for t in make_inputs(B, 1, heads, D, dtype=dtype, device=device))
            state = torch.zeros(B, heads, D, D, device=device)
            in_place = backend == "triton"
            ms = _bench_ms(lambda: recurrent_delta_rule(q, k, v, beta, initial_state=state, backend=backend,
                                                        update_state_in_place=in_place),
                           device.type, 10, 100, repeats)
            tbps = 2 * state.numel() * 4 / ms / 1e9
            rows.append(dict(B=B, H=heads, D=D, us=ms * 1e3, state_tbps=tbps))
            print(f"  B={B:<3} {ms * 1e3:8.1f} us   (state read+write {tbps:.2f} TB/s)", flush=True)
    return rows


# --- report -----------------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_rows(rows: list[dict]) -> None:
    print(f"{'shape':<32} {'impl':<11} {'fwd ms':>8} {'f+b ms':>8} {'peak GiB':>9} {'fwd TF/s':>9} "
          f"{'roofline':>9}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:<32} {r['impl']:<11} {r['error']}")
            continue
        print(f"{r['shape']:<32} {r['impl']:<11} {r['fwd_ms']:>8.3f} {_fmt(r['fwd_bwd_ms'], '.3f'):>8} "
              f"{_fmt(r['peak_mem_gib'], '.2f'):>9} {r['fwd_tflops']:>9.3g} "
              f"{_fmt(r['fwd_roofline'], '.2f'):>9}  {r.get('note', '')}")


def print_table(result):
    if result.get("figure"):
        print(f"\n# figure (Figure 1): B*T = {result['tokens']}, forward and forward+backward ms against T")
        print_rows(result["figure"])
    rows = result.get("rows")
    if not rows:
        return
    print("\n# table")
    print_rows(rows)
    by_shape = {}
    for r in rows:
        by_shape.setdefault(r["shape"], {})[r["impl"]] = r
    ratios = [(s, d["fla"]["fwd_ms"] / d["deltanet"]["fwd_ms"],
               d["fla"]["fwd_bwd_ms"] / d["deltanet"]["fwd_bwd_ms"],
               d["deltanet"]["peak_mem_gib"] / max(d["fla"]["peak_mem_gib"], 1e-9))
              for s, d in by_shape.items()
              if "fwd_ms" in d.get("fla", {}) and "fwd_ms" in d.get("deltanet", {})]
    if ratios:
        print(f"\n{'shape':<32} {'fwd speed-up':>13} {'f+b speed-up':>13} {'mem ratio':>10}   "
              "(vs fla; >1 = faster)")
        for s, f, fb, m in ratios:
            print(f"{s:<32} {f:>12.2f}x {fb:>12.2f}x {m:>10.2f}")

        def gm(xs):
            return math.exp(sum(map(math.log, xs)) / len(xs))

        print(f"{'geometric mean':<32} {gm([r[1] for r in ratios]):>12.2f}x "
              f"{gm([r[2] for r in ratios]):>12.2f}x")


def plot(result, path) -> bool:
    """The figure section as a PNG: forward (left) and forward+backward (right) ms against T, log-log, one
    line per implementation and head dim. False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.get("figure", []) if "error" not in r]
    if not rows:
        return False
    head_dims = sorted({r["D"] for r in rows})
    seq_lens = sorted({r["T"] for r in rows})
    backend = "Triton" if result["device"] == "cuda" else "PyTorch"
    styles = ["-", "--", ":", "-."]  # one per head dim; one colour per implementation
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = ((axes[0], "fwd_ms", "forward ms"), (axes[1], "fwd_bwd_ms", "forward+backward ms"))
    for axis, key, label in panels:
        for colour, impl in enumerate(name for name in LABELS if any(r["impl"] == name for r in rows)):
            for style, D in zip(styles * len(head_dims), head_dims):
                points = sorted((r["T"], r[key]) for r in rows if r["impl"] == impl and r["D"] == D
                                and r[key] is not None)
                if not points:
                    continue
                name = LABELS[impl] + (f" ({backend})" if impl in ("deltanet", "recurrent") else "")
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", linestyle=style,
                          color=f"C{colour}", label=name + (f", D={D}" if len(head_dims) > 1 else ""))
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(seq_lens, [str(T) for T in seq_lens])
        axis.set_xlabel("sequence length T")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    if not any(r["fwd_bwd_ms"] is not None for r in rows if r["impl"] == "recurrent"):
        axes[1].set_title("recurrent: forward only (no backward kernel)", fontsize=9)
    H = rows[0]["H"]
    dtype = "bf16" if result["device"] == "cuda" else "float32"
    dims = "D=" + "/".join(map(str, head_dims))
    fig.suptitle(f"{result['card']}, {result['date']}: B*T = {result['tokens']}, H={H}, {dims}, {dtype}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- command ----------------------------------------------------------------------------------------------


def _shape4(text: str) -> tuple[int, int, int, int]:
    try:
        B, T, H, D = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--table-shapes: {text!r} is not BxTxHxD (e.g. 8x2048x16x128)") from None
    return B, T, H, D


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_results"),
                        help="folder for kernels.json and kernels.png (default: $OUT, else bench_results)")
    parser.add_argument("--device", default="cuda",
                        help="cuda, or cpu for a smoke test of the PyTorch paths at tiny sizes "
                        "(default: cuda)")
    parser.add_argument("--sections", nargs="+", default=["figure", "table"], choices=SECTIONS,
                        help="what to run: figure (Figure 1: time against T), table (the main table), decode "
                        "(one decoding step) (default: figure table)")
    parser.add_argument("--tokens", type=int, default=16384,
                        help="figure: tokens per batch B*T; B = tokens / T, and 1 for longer T "
                        "(default: 16384)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=FIGURE_SEQ_LENS, metavar="T",
                        help="figure: sequence lengths; each divides --tokens or exceeds it (B=1), e.g. add "
                        "32768 (default: %s)" % " ".join(map(str, FIGURE_SEQ_LENS)))
    parser.add_argument("--heads", type=int, default=16,
                        help="figure and decode: heads H (default: 16)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128], metavar="D",
                        help="figure and decode: head dims K = V, up to 256; the paper's Figure 1 has "
                        "64 128 256 (default: 128)")
    parser.add_argument("--table-shapes", nargs="+", default=[f"{B}x{T}x{H}x{D}" for B, T, H, D in SHAPES],
                        metavar="BxTxHxD", help="table: shapes (default: %s)"
                        % " ".join(f"{B}x{T}x{H}x{D}" for B, T, H, D in SHAPES))
    parser.add_argument("--varlen-lengths", type=int, nargs="*", default=VARLEN_LENGTHS, metavar="L",
                        help="table: lengths of the packed batch, at the first table shape's H and D; the "
                        "option with no lengths leaves it out (default: %s)"
                        % " ".join(map(str, VARLEN_LENGTHS)))
    parser.add_argument("--only", type=int, nargs="+", metavar="I",
                        help="table: only these cases, 0-based: the table shapes in order, then the packed "
                        "batch (default: all)")
    parser.add_argument("--fla", action=argparse.BooleanOptionalAction, default=False,
                        help="table: also time flash-linear-attention's chunk_delta_rule if installed, with "
                        "a speed-up table (it autotunes each new shape: minutes more) (default: off)")
    parser.add_argument("--no-sdpa", action="store_true", help="leave SDPA attention out (default: in)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="CPU only: timed runs after one warm-up, median; CUDA uses do_bench "
                        "(default: 3)")


def check_arguments(args: argparse.Namespace) -> torch.device:
    """The device, after checking the options that argparse cannot; UserError names the option at fault."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device (cuda or cpu)") from None
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device!r}: cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"no CUDA device here: the kernel benchmark times GPU kernels; for a CPU smoke test "
                        f"of the PyTorch paths: deltanet bench kernels {CPU_SMOKE}")
    if args.fla and device.type != "cuda":
        raise UserError("--fla needs CUDA: flash-linear-attention's kernels are Triton GPU kernels")
    for name in ("tokens", "heads", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for T in args.seq_lens:
        if T < 1 or (T < args.tokens and args.tokens % T):
            raise UserError(f"--seq-lens: {T} must be positive and divide --tokens {args.tokens} "
                            "(or exceed it, with B=1)")
    for D in args.head_dims:
        if not 1 <= D <= 256:
            raise UserError(f"--head-dims: {D} is not in 1..256 (the kernels' limit)")
    lengths = args.varlen_lengths
    if any(length < 0 for length in lengths) or lengths and not sum(lengths):
        raise UserError(f"--varlen-lengths must be >= 0 with a positive sum, got {args.varlen_lengths}")
    args.table_shapes = [_shape4(text) if isinstance(text, str) else text for text in args.table_shapes]
    for shape in args.table_shapes:
        if min(shape) < 1 or shape[3] > 256:
            raise UserError(f"--table-shapes: {'x'.join(map(str, shape))} needs positive sizes and D <= 256")
    cases = len(args.table_shapes) + bool(args.varlen_lengths)
    bad = [i for i in args.only or () if not 0 <= i < cases]
    if bad:
        raise UserError(f"--only: {bad} out of range: the table has cases 0..{cases - 1}")
    return device


def run(args: argparse.Namespace) -> int:
    """`deltanet bench kernels`: the sections, then kernels.json, kernels.png and the tables."""
    device = check_arguments(args)
    os.makedirs(args.out, exist_ok=True)  # before the minutes of measuring: a bad --out fails now
    result = run_sections(args, device)
    result["args"] = {name: value for name, value in vars(args).items()
                      if isinstance(value, (str, int, float, bool, list, type(None)))}
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {os.path.join(args.out, 'kernels.json')}", flush=True)
    if result.get("figure"):
        try:
            if plot(result, os.path.join(args.out, "kernels.png")):
                print(f"wrote {os.path.join(args.out, 'kernels.png')}", flush=True)
        except ImportError:
            print("matplotlib not installed (pip install 'deltanet[bench]'): no plot", flush=True)
    print_table(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m deltanet.benchmarks.kernels`, the same as `deltanet bench kernels`."""
    from deltanet.benchmarks.entry import module_main

    return module_main("python -m deltanet.benchmarks.kernels", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
