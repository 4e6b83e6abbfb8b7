"""CPU benchmark of the PyTorch delta-rule paths: chunked vs token-by-token, time and memory.

Time: forward + backward (sum of outputs), median of `repeats` runs after one warm-up, wall clock.
Memory: bytes that autograd keeps for the backward (counted through saved-tensor hooks, each storage
once). That is the part of the memory that grows with T; it must grow linearly (no [T, T] matrix).

Run: `python -m deltanet.benchmarks.ops_cpu` or `deltanet check`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from deltanet.ops import chunk_delta_rule, l2_normalize, recurrent_delta_rule


def _inputs(T: int, H: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, D, generator=g)
    k = l2_normalize(torch.randn(1, T, H, D, generator=g))
    v = torch.randn(1, T, H, D, generator=g)
    beta = torch.rand(1, T, H, generator=g)
    return [t.requires_grad_() for t in (q, k, v, beta)]


def time_forward_backward(op, inputs, repeats: int) -> float:
    """Median seconds of op(*inputs) forward and backward, after one warm-up run."""
    times = []
    for i in range(repeats + 1):
        for t in inputs:
            t.grad = None
        start = time.perf_counter()
        o, _ = op(*inputs)
        o.sum().backward()
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_bytes(op, inputs) -> int:
    """Bytes autograd saves for the backward of op(*inputs), each storage counted once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, _ = op(*inputs)
    del o
    return sum(storages.values())


def run(seq_lens=(1024, 4096), memory_seq_lens=(1024, 2048, 4096, 8192), heads=4, head_dim=64, repeats=3):
    """Print the speed table (chunked vs recurrent) and the memory table; return both as dicts."""
    print(f"# delta rule, PyTorch paths on CPU ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), float32, B=1, H={heads}, K=V={head_dim}, forward+backward")
    print(f"{'T':>6} {'chunked ms':>11} {'recurrent ms':>13} {'speed-up':>9}")
    speed = []
    for T in seq_lens:
        inputs = _inputs(T, heads, head_dim)
        chunk_s = time_forward_backward(chunk_delta_rule, inputs, repeats)
        rec_s = time_forward_backward(recurrent_delta_rule, inputs, 1)
        speed.append({"T": T, "chunked_s": chunk_s, "recurrent_s": rec_s, "speedup": rec_s / chunk_s})
        print(f"{T:>6} {chunk_s * 1e3:>11.1f} {rec_s * 1e3:>13.1f} {rec_s / chunk_s:>8.1f}x")
    print(f"\n{'T':>6} {'saved for backward MB':>22} {'bytes per token':>16}")
    memory = []
    for T in memory_seq_lens:
        nbytes = saved_bytes(chunk_delta_rule, _inputs(T, heads, head_dim))
        memory.append({"T": T, "saved_bytes": nbytes})
        print(f"{T:>6} {nbytes / 2**20:>22.1f} {nbytes / T:>16.0f}")
    return {"speed": speed, "memory": memory}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096], help="T values to time")
    parser.add_argument("--heads", type=int, default=4, help="number of heads H")
    parser.add_argument("--head-dim", type=int, default=64, help="K = V")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the chunked path (median)")
    args = parser.parse_args(argv)
    run(tuple(args.seq_lens), heads=args.heads, head_dim=args.head_dim, repeats=args.repeats)


if __name__ == "__main__":
    main()
