"""Every Triton kernel compiles for an H100 (sm_90a), on a machine without a GPU.

CI has no GPU and the interpreter does not compile, so a kernel that would fail to build on the card (a
block pointer with a 64-bit offset, an unsupported dot precision, a bad constexpr branch) would otherwise
show up only in a GPU session. Triton's compiler and its bundled ptxas run on the CPU. The compilation
runs in a subprocess without TRITON_INTERPRET (the test session sets it, and interpreted kernels cannot
be compiled).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

INT_POINTERS = ("cu_seqlens", "chunk_indices", "chunk_offsets", "doc_position")
LONG_POINTERS = ("targets",)
FLOAT_SCALARS = ("scale", "inv_n", "eps")
# float32 inputs in the rounding tf32 mode: the most code (rounding, tf32 products) in one build per kernel.
BASE = {
    "H": 4,
    "K": 64,
    "V": 64,
    "BT": 64,
    "BK": 64,
    "BV": 64,
    "IS_VARLEN": True,
    "DOT_PRECISION": "tf32_round",
}

# The q/k/v feature kernels at the 340M model's row stride with beta's logits passed through: 3 * 1024 + 8.
QKV = {"X_STRIDE": 3080, "W": 4, "BLOCK_D": 128, "IS_VARLEN": True, "NORMALIZE_QK": True}


def kernels() -> dict:
    """name -> (kernel, pointer arguments, scalar arguments, constexpr values)."""
    from deltanet.ops.triton.backward import bwd_direct_kernel, bwd_through_wy_kernel
    from deltanet.ops.triton.cross_entropy import cross_entropy_bwd_kernel, cross_entropy_fwd_kernel
    from deltanet.ops.triton.output import output_kernel
    from deltanet.ops.triton.qkv_features import qkv_features_dz_kernel, qkv_features_fwd_kernel
    from deltanet.ops.triton.recurrent import recurrent_fwd_kernel
    from deltanet.ops.triton.row_norm import row_norm_bwd_kernel, row_norm_fwd_kernel
    from deltanet.ops.triton.short_conv import (
        short_conv_dx_dw_kernel,
        short_conv_dz_kernel,
        short_conv_fwd_kernel,
    )
    from deltanet.ops.triton.state import state_bwd_kernel, state_fwd_kernel
    from deltanet.ops.triton.swiglu import swiglu_bwd_kernel, swiglu_fwd_kernel
    from deltanet.ops.triton.wy import wy_fwd_kernel

    return {
        "wy": (
            wy_fwd_kernel,
            ["k", "v", "beta", "w", "u", "a_inv", "cu_seqlens", "chunk_indices"],
            ["T"],
            {**BASE, "STORE_A_INV": True, "INVERSE_BY_BLOCKS": False},
        ),
        "wy (inverse by 16 x 16 blocks)": (
            wy_fwd_kernel,
            ["k", "v", "beta", "w", "u", "a_inv", "cu_seqlens", "chunk_indices"],
            ["T"],
            {**BASE, "STORE_A_INV": True, "INVERSE_BY_BLOCKS": True},
        ),
        "state_fwd (fused output)": (
            state_fwd_kernel,
            ["q", "k", "w", "u", "h", "u_tilde", "o", "h0", "ht", "cu_seqlens", "chunk_offsets"],
            ["scale", "T"],
            {
                **BASE,
                "HAS_INITIAL_STATE": True,
                "STORE_FINAL_STATE": True,
                "FUSE_OUTPUT": True,
                "STORE_STATES": False,
            },
        ),
        "state_fwd (fused output, states kept for the backward)": (
            state_fwd_kernel,
            ["q", "k", "w", "u", "h", "u_tilde", "o", "h0", "ht", "cu_seqlens", "chunk_offsets"],
            ["scale", "T"],
            {
                **BASE,
                "HAS_INITIAL_STATE": True,
                "STORE_FINAL_STATE": True,
                "FUSE_OUTPUT": True,
                "STORE_STATES": True,
            },
        ),
        "state_fwd (states for the backward)": (
            state_fwd_kernel,
            ["q", "k", "w", "u", "h", "u_tilde", "o", "h0", "ht", "cu_seqlens", "chunk_offsets"],
            ["scale", "T"],
            {
                **BASE,
                "HAS_INITIAL_STATE": True,
                "STORE_FINAL_STATE": False,
                "FUSE_OUTPUT": False,
                "STORE_STATES": True,
            },
        ),
        "state_bwd": (
            state_bwd_kernel,
            ["q", "k", "w", "do", "dh", "du_tilde", "dht", "dh0", "cu_seqlens", "chunk_offsets"],
            ["scale", "T"],
            {
                **BASE,
                "HAS_FINAL_STATE_GRAD": True,
                "STORE_INITIAL_STATE_GRAD": True,
            },
        ),
        "output": (
            output_kernel,
            ["q", "k", "h", "u_tilde", "o", "cu_seqlens", "chunk_indices"],
            ["scale", "T"],
            BASE,
        ),
        "bwd_direct": (
            bwd_direct_kernel,
            [
                "q",
                "k",
                "h",
                "dh",
                "u_tilde",
                "du_tilde",
                "do",
                "dq",
                "dk_direct",
                "dw",
                "cu_seqlens",
                "chunk_indices",
            ],
            ["scale", "T"],
            BASE,
        ),
        "bwd_through_wy": (
            bwd_through_wy_kernel,
            [
                "k",
                "v",
                "beta",
                "a_inv",
                "w",
                "u",
                "dw",
                "du_tilde",
                "dk_direct",
                "dk",
                "dv",
                "dbeta",
                "cu_seqlens",
                "chunk_indices",
            ],
            ["T"],
            BASE,
        ),
        "recurrent": (
            recurrent_fwd_kernel,
            ["q", "k", "v", "beta", "o", "h0", "ht", "cu_seqlens"],
            ["scale", "T"],
            {
                "H": 4,
                "K": 64,
                "V": 64,
                "BK": 64,
                "BV": 64,
                "HAS_INITIAL_STATE": True,
                "STORE_FINAL_STATE": True,
                "IS_VARLEN": True,
            },
        ),
        "short_conv_fwd": (
            short_conv_fwd_kernel,
            ["x", "weight", "doc_position", "y"],
            ["T", "C"],
            {"W": 4, "BLOCK_T": 64, "BLOCK_C": 128, "IS_VARLEN": True, "SILU": True},
        ),
        "short_conv_dz": (
            short_conv_dz_kernel,
            ["x", "weight", "doc_position", "dy", "dz"],
            ["T", "C"],
            {"W": 4, "BLOCK_T": 32, "BLOCK_C": 128, "IS_VARLEN": True, "SILU": True},
        ),
        "short_conv_dx_dw": (
            short_conv_dx_dw_kernel,
            ["dz", "x", "weight", "doc_position", "dx", "dweight_partial"],
            ["T", "C"],
            {"X_STRIDE": 3080, "W": 4, "BLOCK_T": 64, "BLOCK_C": 128, "IS_VARLEN": True},
        ),
        "qkv_features_fwd": (
            qkv_features_fwd_kernel,
            ["x", "weight", "doc_position", "q", "k", "v"],
            ["T", "H", "D", "eps"],
            {**QKV, "BLOCK_T": 32},
        ),
        "qkv_features_dz": (
            qkv_features_dz_kernel,
            ["x", "weight", "doc_position", "dq", "dk", "dv", "dz"],
            ["T", "H", "D", "eps"],
            {**QKV, "BLOCK_T": 16},
        ),
        "row_norm_fwd": (
            row_norm_fwd_kernel,
            ["X", "W", "G", "Y", "RSTD"],
            ["N", "D", "inv_n", "eps"],
            {"HAS_WEIGHT": True, "HAS_GATE": True, "BLOCK_ROWS": 4, "BLOCK_D": 1024},
        ),
        "row_norm_bwd": (
            row_norm_bwd_kernel,
            ["X", "W", "G", "DY", "RSTD", "DX", "DG", "DW_PARTIAL"],
            ["N", "D", "inv_n", "blocks_per_program"],
            {"HAS_WEIGHT": True, "HAS_GATE": True, "BLOCK_ROWS": 4, "BLOCK_D": 1024},
        ),
        "cross_entropy_fwd": (
            cross_entropy_fwd_kernel,
            ["LOGITS", "targets", "LOSS", "LSE"],
            ["V", "stride_row", "ignore_index"],
            {"BLOCK_V": 4096},
        ),
        "cross_entropy_bwd": (
            cross_entropy_bwd_kernel,
            ["LOGITS", "targets", "LSE", "DLOGITS", "DLOSS"],
            ["V", "stride_row", "ignore_index"],
            {"BLOCK_V": 4096},
        ),
        "swiglu_fwd": (swiglu_fwd_kernel, ["G", "U", "H"], ["n"], {"BLOCK": 2048}),
        "swiglu_bwd": (swiglu_bwd_kernel, ["G", "U", "DH", "DG", "DU"], ["n"], {"BLOCK": 2048}),
    }


def all_builds() -> dict:
    """Every kernel, and the chunk kernels again in "tf32x3" (float32 inputs with allow_tf32=False)."""
    builds = kernels()
    for name, (fn, pointers, scalars, constants) in list(builds.items()):
        if constants.get("DOT_PRECISION") == "tf32_round":
            builds[f"{name} tf32x3"] = (fn, pointers, scalars, {**constants, "DOT_PRECISION": "tf32x3"})
    return builds


def compile_all() -> list[str]:
    """Compile each kernel build for sm_90a; return the names that failed, with the error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = []
    for name, (fn, pointers, scalars, constants) in all_builds().items():
        signature = {p: "*i32" if p in INT_POINTERS else "*i64" if p in LONG_POINTERS else "*fp32"
                     for p in pointers}  # float32 inputs
        signature.update({s: "fp32" if s in FLOAT_SCALARS else "i32" for s in scalars})
        signature.update({c: "constexpr" for c in constants})
        try:
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constants),
                target=GPUTarget("cuda", 90, 128),
                options={"num_warps": 4, "num_stages": 1},
            )
            assert compiled.asm["cubin"], "no machine code"
        except Exception as error:  # report every kernel, not only the first failure
            failures.append(f"{name}: {type(error).__name__}: {str(error)[-300:]}")
    return failures


def vector_loads_of_x() -> dict:
    """PTX of qkv_features' forward for bf16 tensors as a launch specialises them (16-byte aligned pointers, D
    a multiple of 16), at two row strides: name -> number of 16-byte global loads."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from deltanet.ops.triton.qkv_features import qkv_features_fwd_kernel

    pointers = ["x", "weight", "doc_position", "q", "k", "v"]
    counts = {}
    for stride in (3072, 3080):
        signature = {p: "*i32" if p == "doc_position" else "*fp32" if p == "weight" else "*bf16"
                     for p in pointers}
        signature.update({"T": "i32", "H": "i32", "D": "i32", "eps": "fp32"})
        constants = {**QKV, "X_STRIDE": stride, "BLOCK_T": 32, "IS_VARLEN": False}
        signature.update({c: "constexpr" for c in constants})
        names = list(signature)
        aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in [*pointers, "T", "D"]}
        compiled = triton.compile(
            ASTSource(fn=qkv_features_fwd_kernel, signature=signature, constexprs=constants, attrs=aligned),
            target=GPUTarget("cuda", 90, 128), options={"num_warps": 4, "num_stages": 1},
        )
        counts[f"stride {stride}"] = len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.b32", compiled.asm["ptx"]))
    return counts


def test_every_kernel_compiles_for_h100():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_feature_rows_at_an_odd_stride_still_load_in_16_byte_vectors():
    """x's row stride is a compile-time constant: with beta's logits in the same matmul the 340M model's rows
    are 3080 bf16 wide (not a multiple of 16 elements), and as a plain int argument that hid their alignment
    and made every load of x a 2-byte load."""
    from deltanet.ops.triton.qkv_features import qkv_features_dz_kernel, qkv_features_fwd_kernel
    from deltanet.ops.triton.short_conv import short_conv_dx_dw_kernel

    # each declares X_STRIDE constexpr (the compile below takes the constexpr from the signature)
    for kernel in (qkv_features_fwd_kernel, qkv_features_dz_kernel, short_conv_dx_dw_kernel):
        annotation = inspect.signature(kernel.fn).parameters["X_STRIDE"].annotation  # JIT or interpreted
        assert "constexpr" in str(annotation), kernel.fn.__name__
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, __file__, "--vectors"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["stride 3072"] > 0 and counts["stride 3080"] >= counts["stride 3072"], counts


if __name__ == "__main__":
    if "--vectors" in sys.argv:
        print(json.dumps(vector_loads_of_x()))
        sys.exit(0)
    failed = compile_all()
    print("\n".join(failed) or f"all {len(all_builds())} kernel builds compiled for sm_90a")
    sys.exit(1 if failed else 0)
