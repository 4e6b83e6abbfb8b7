"""Which products make the Triton kernels' float32-with-tf32 error? An emulation on the CPU.

The kernels' forward algorithm (chunks of 64, inverse by recursive doubling, state pass, output) is run in
float32 with the operands of chosen groups of products rounded to tf32 (10-bit mantissa, as the tensor
cores read them), and compared with the float64 PyTorch path. On an H100 the all-tf32 kernels measured
1.9e-3 norm-wise relative error on o (docs/kernels.md); the issue's bar is 1e-3.

Run: PYTHONPATH=src python benchmarks/tf32_error_budget.py   (a minute on 2 cores)
"""

import torch
import torch.nn.functional as F

from deltanet.ops import chunk_delta_rule

GROUPS = ("A", "inverse", "wy", "state", "output")


def tf32(x):
    """Round float32 to tf32 (round to nearest on the 13 dropped mantissa bits)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


def tf32_truncated(x):
    """float32 -> tf32 by dropping the 13 low mantissa bits (the tensor cores' own conversion)."""
    return (x.contiguous().view(torch.int32) & -0x2000).view(torch.float32)


def tf32x3(a, b):
    """a @ b as three tf32 products of split operands, hi*hi + hi*lo + lo*hi (Triton's "tf32x3", used for
    allow_tf32=False). Worst case for the split: both parts truncated."""
    a_hi, b_hi = tf32_truncated(a), tf32_truncated(b)
    a_lo, b_lo = tf32_truncated(a - a_hi), tf32_truncated(b - b_hi)
    return a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)


def forward(q, k, v, beta, scale, rounded, C=64):
    """[B, T, H, D] float32 inputs, T a multiple of C -> o; products of the groups in `rounded` in tf32
    (rounded = "tf32x3": every product as tf32x3)."""

    def mm(a, b, group):
        if rounded == "tf32x3":
            return tf32x3(a, b)
        return tf32(a) @ tf32(b) if group in rounded else a @ b

    B, T, H, K = q.shape
    V = v.shape[-1]

    def chunks(x):
        return x.reshape(B, T // C, C, H, -1).permute(0, 3, 1, 2, 4)  # [B, H, N, C, d]

    qc, kc, vc, bc = chunks(q), chunks(k), chunks(v), chunks(beta[..., None])
    kb, vb = kc * bc, vc * bc
    rows = torch.arange(C)[:, None]
    cols = torch.arange(C)[None, :]
    A = mm(kb, kc.transpose(-1, -2), "A").masked_fill(rows <= cols, 0)
    X = (rows == cols).float() - torch.where((rows // 2 == cols // 2) & (rows > cols), A, 0.0)
    b = 2
    while b < C:
        A_b = torch.where((rows // (2 * b) == cols // (2 * b)) & (rows // b > cols // b), A, 0.0)
        X = X - mm(X, mm(A_b, X, "inverse"), "inverse")
        b *= 2
    w, u = mm(X, kb, "wy"), mm(X, vb, "wy")
    S = torch.zeros(B, H, K, V)
    outs = []
    for n in range(T // C):
        ut = u[:, :, n] - mm(w[:, :, n], S, "state")
        qk = mm(qc[:, :, n], kc[:, :, n].transpose(-1, -2), "output").masked_fill(rows < cols, 0)
        outs.append(scale * (mm(qc[:, :, n], S, "output") + mm(qk, ut, "output")))
        S = S + mm(kc[:, :, n].transpose(-1, -2), ut, "state")
    return torch.stack(outs, 2).permute(0, 2, 3, 1, 4).reshape(B, T, H, V)


def main():
    g = torch.Generator().manual_seed(0)
    B, T, H, D = 2, 2048, 4, 128  # the GPU check's float32 case
    q = torch.randn(B, T, H, D, generator=g)
    k = F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    beta = torch.rand(B, T, H, generator=g)
    scale = D**-0.5
    ref, _ = chunk_delta_rule(q.double(), k.double(), v.double(), beta.double(), scale=scale, backend="torch")

    def err(o):
        return ((o.double() - ref).norm() / ref.norm()).item()

    print(f"{'tf32 in':<28} o norm rel. error")
    print(f"{'nothing (float32)':<28} {err(forward(q, k, v, beta, scale, ())):.2e}")
    for group in GROUPS:
        print(f"{group:<28} {err(forward(q, k, v, beta, scale, (group,))):.2e}", flush=True)
    print(f"{'all (the kernels today)':<28} {err(forward(q, k, v, beta, scale, GROUPS)):.2e}")
    print(f"{'all as tf32x3 (no tf32)':<28} {err(forward(q, k, v, beta, scale, 'tf32x3')):.2e}", flush=True)
    for spared in GROUPS:
        rest = tuple(x for x in GROUPS if x != spared)
        print(f"{'all but ' + spared:<28} {err(forward(q, k, v, beta, scale, rest)):.2e}", flush=True)


if __name__ == "__main__":
    main()
