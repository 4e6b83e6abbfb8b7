"""Argument checks shared by every delta-rule op.

Each public op calls :func:`check_delta_rule_inputs` before any work, so that bad input fails with an
error naming the argument and the expected shape or value, instead of a broadcasting accident or an
index error deep inside a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltanet.ops.host_offsets import host_offsets

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class DeltaRuleShape:
    """Sizes of one delta-rule call, read off validated arguments."""

    batch: int  # B
    seq_len: int  # T
    num_heads: int  # H
    key_dim: int  # K
    value_dim: int  # V
    num_sequences: int  # N: B, or len(cu_seqlens) - 1


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_cu_seqlens(
    cu_seqlens: torch.Tensor, batch: int, seq_len: int, device: torch.device, input_name: str
) -> tuple[int, ...]:
    """Validate packed-sequence offsets for an input [B, T, ...] called input_name; return them as ints
    (None under torch.compile's tracing, where only their type, shape and device are checked).

    cu_seqlens must be an int32/int64 tensor [N + 1] on the input's device, B must be 1, and the offsets must
    start at 0, end at T and never decrease. Reads cu_seqlens on the host (once per tensor: host_offsets).
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape [N + 1] with N >= 1, got {shape_str(cu_seqlens)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but {input_name} is on {device}")
    if batch != 1:
        raise ValueError(
            f"with cu_seqlens the batch size B of {input_name} must be 1 (sequences packed along T), "
            f"got B={batch}"
        )
    if torch.compiler.is_compiling():
        # Reading the values would break the graph and specialise it on them: a compiled model recompiled
        # for every new packing. Under torch.compile the ops check them where they read them anyway.
        return None
    offsets = host_offsets(cu_seqlens)
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {offsets[0]}")
    if offsets[-1] != seq_len:
        raise ValueError(f"cu_seqlens must end at T={seq_len}, got {offsets[-1]}")
    if any(b < a for a, b in zip(offsets[:-1], offsets[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {offsets}")
    return offsets


def check_delta_rule_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> DeltaRuleShape:
    """Validate the arguments of a delta-rule op and return its sizes.

    Raises TypeError for a non-tensor or non-floating argument, ValueError for a wrong rank or shape,
    mismatched sizes, mixed devices or malformed cu_seqlens. Reads cu_seqlens on the host (one sync).
    """
    for name, t in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float64, float32, bfloat16 or float16, got {t.dtype}")
    for name, t, rank, layout in (
        ("q", q, 4, "[B, T, H, K]"),
        ("k", k, 4, "[B, T, H, K]"),
        ("v", v, 4, "[B, T, H, V]"),
        ("beta", beta, 3, "[B, T, H]"),
    ):
        if t.dim() != rank:
            raise ValueError(f"{name} must have shape {layout} ({rank} dims), got {shape_str(t)}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {shape_str(q)} = [B, T, H, K], got {shape_str(k)}")
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"v must have shape [B, T, H, V] = [{B}, {T}, {H}, V], got {shape_str(v)}")
    if beta.shape != (B, T, H):
        raise ValueError(f"beta must have shape [B, T, H] = [{B}, {T}, {H}], got {shape_str(beta)}")
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"q must have non-empty B, T and H, got {shape_str(q)}")
    if not 1 <= K <= MAX_HEAD_DIM:
        raise ValueError(f"q and k head dim K must be in [1, {MAX_HEAD_DIM}], got {K}")
    if not 1 <= V <= MAX_HEAD_DIM:
        raise ValueError(f"v head dim V must be in [1, {MAX_HEAD_DIM}], got {V}")
    device = q.device
    for name, t in (("k", k), ("v", v), ("beta", beta)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q is on {device}: all inputs must share a device")

    num_sequences = B
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, B, T, device, "q")
        num_sequences = cu_seqlens.numel() - 1

    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor):
            raise TypeError(f"initial_state must be a torch.Tensor, got {type(initial_state).__name__}")
        if initial_state.dtype not in FLOAT_DTYPES:
            raise TypeError(f"initial_state must be a floating tensor, got {initial_state.dtype}")
        expected = (num_sequences, H, K, V)
        if initial_state.shape != expected:
            raise ValueError(
                f"initial_state must have shape [N, H, K, V] = [{num_sequences}, {H}, {K}, {V}], "
                f"got {shape_str(initial_state)}"
            )
        if initial_state.device != device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {device}")
    return DeltaRuleShape(B, T, H, K, V, num_sequences)


def check_chunk_size(chunk_size: int) -> None:
    """chunk_size must be a positive power of two (kernels tile by it)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size}")


def state_dtype_for(*tensors: torch.Tensor) -> torch.dtype:
    """States and internal arithmetic are float32, or float64 when the inputs are float64."""
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def resolve_scale(scale: float | None, key_dim: int) -> float:
    if scale is None:
        return key_dim**-0.5
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    return float(scale)
