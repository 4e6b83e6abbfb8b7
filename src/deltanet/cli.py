"""The `deltanet` command line. Subcommands:

  check   verify the chunked op against the float64 recurrence and print a CPU speed table
"""

from __future__ import annotations

import argparse
import sys


def _check(args: argparse.Namespace) -> int:
    import torch

    from deltanet.benchmarks import ops_cpu
    from deltanet.ops import chunk_delta_rule, l2_normalize, recurrent_delta_rule

    g = torch.Generator().manual_seed(0)
    B, T, H, K, V = 2, 333, 2, 32, 48
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    k = l2_normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = 2 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    o_ref, s_ref = recurrent_delta_rule(q, k, v, beta, output_final_state=True)
    ok = True
    print(f"# self-check: chunked vs float64 recurrence, B={B} T={T} H={H} K={K} V={V}")
    for dtype, bound in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        o, s = chunk_delta_rule(*(t.to(dtype) for t in (q, k, v, beta)), output_final_state=True)
        err = ((o.double() - o_ref).abs().max() / o_ref.abs().max()).item()
        status = "ok" if err <= bound else "FAIL"
        ok &= err <= bound
        print(f"{str(dtype):>15}: max rel error {err:.2e} (bound {bound:.0e}) {status}")
    print()
    ops_cpu.run(seq_lens=tuple(args.seq_lens), repeats=args.repeats)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltanet",
                                     description="DeltaNet: linear transformers with the delta rule.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="self-check the ops on this machine and print a CPU speed table")
    check.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096],
                       help="sequence lengths to time (default: 1024 4096)")
    check.add_argument("--repeats", type=int, default=3,
                       help="timed runs of the chunked path, median (default: 3)")
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
