"""Pieces shared by the delta-rule kernels: sequence/chunk indexing and the unit-lower-triangular inverse.

Every kernel sees tokens as one flat axis of length B*T (q is [B*T, H, K] in memory), split into
sequences [bos, eos): for fixed-length batches sequence n is [n*T, (n+1)*T); for packed input the
bounds come from cu_seqlens. Each sequence is cut into chunks of BT tokens; the last may be partial, and
every load of it is masked (boundary_check against the sequence length) so that no token of the next
sequence leaks in.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

from deltanet.ops.host_offsets import host_offsets, memoized


@triton.jit
def sequence_bounds(n, cu_seqlens, T, IS_VARLEN: tl.constexpr):
    """First token of sequence n on the flat token axis (int64, for address arithmetic) and its length
    (int32: block-pointer shapes and offsets must be 32-bit)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    else:
        bos = n.to(tl.int64) * T
        eos = bos + T
    return bos, (eos - bos).to(tl.int32)


@triton.jit
def chunk_coordinates(i_c, chunk_indices, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Global chunk index -> (sequence n, chunk j within the sequence)."""
    if IS_VARLEN:
        n = tl.load(chunk_indices + 2 * i_c)
        j = tl.load(chunk_indices + 2 * i_c + 1)
    else:
        chunks_per_seq = tl.cdiv(T, BT)
        n = i_c // chunks_per_seq
        j = i_c % chunks_per_seq
    return n, j


@triton.jit
def first_chunk(n, chunk_offsets, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Global index of sequence n's first chunk (the row of its first state in h)."""
    if IS_VARLEN:
        return tl.load(chunk_offsets + n).to(tl.int64)
    return n.to(tl.int64) * tl.cdiv(T, BT)


@triton.jit
def round_to_tf32(x):
    """float32 tiles rounded to the nearest tf32 (10-bit mantissa); other dtypes unchanged.

    The tensor cores read a float32 operand of a tf32 product by dropping its low 13 mantissa bits, which
    biases every product towards zero: emulating that on the CPU reproduced the 1.9e-3 error measured on an
    H100 for float32 inputs, and rounding first brought the emulation to 5.8e-4
    (benchmarks/tf32_error_budget.py).
    """
    if x.dtype == tl.float32:
        bits = x.to(tl.int32, bitcast=True)
        return ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)
    return x


@triton.jit
def dot(a, b, DOT_PRECISION: tl.constexpr):
    """tl.dot with the kernels' precision modes: "tf32" (the tensor cores' own conversion of float32
    operands), "tf32_round" (float32 operands rounded to nearest tf32 first; float32 inputs by default),
    "tf32x3" (three tf32 products of split operands, float32 accuracy; allow_tf32=False), "ieee" (float32
    FMA code; correct but minutes to build on sm_90, unused). bf16/fp16 operands are multiplied as they
    are in every mode."""
    if DOT_PRECISION == "tf32_round":
        return tl.dot(round_to_tf32(a), round_to_tf32(b), input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def diagonal_blocks_inverse(A, BT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """X_16 of unit_lower_inverse: the inverses of I + A's 16 x 16 diagonal blocks, block-diagonal [BT, BT].

    The blocks are cut out as [BT / 16, 16, 16] and inverted by the same doubling with batched 16 x 16
    products: 3 steps on BT / 16 small blocks instead of 3 steps of full [BT, BT] products.
    """
    NB: tl.constexpr = BT // 16
    same_block = tl.arange(0, NB)[:, None, None, None] == tl.arange(0, NB)[None, None, :, None]
    D = tl.sum(tl.where(same_block, tl.reshape(A, (NB, 16, NB, 16)), 0.0), axis=2)  # [NB, 16, 16]
    rows = tl.arange(0, 16)[None, :, None]
    cols = tl.arange(0, 16)[None, None, :]
    X = tl.where(rows == cols, 1.0, 0.0) - tl.where((rows // 2 == cols // 2) & (rows > cols), D, 0.0)
    for step in tl.static_range(1, 4):  # b = 2, 4, 8
        b = 1 << step
        lower_left = (rows // (2 * b) == cols // (2 * b)) & (rows // b > cols // b)
        X = X - dot(X, dot(tl.where(lower_left, D, 0.0), X, DOT_PRECISION), DOT_PRECISION)
    return tl.reshape(tl.where(same_block, X[:, :, None, :], 0.0), (BT, BT))


@triton.jit
def unit_lower_inverse(A, BT: tl.constexpr, DOT_PRECISION: tl.constexpr, BY_BLOCKS: tl.constexpr):
    """(I + A)^-1 for A [BT, BT] float32 strictly lower triangular, by recursive doubling.

    If X_b inverts the block-diagonal part of I + A with diagonal blocks of b rows, then for blocks of
    2b rows [[L11, 0], [L21, L22]]^-1 = [[X11, 0], [-X22 L21 X11, X22]], that is
        X_2b = X_b - X_b (A restricted to the L21 blocks) X_b.
    Starting from X_1 = I, log2(BT) steps of two matrix products each (on the tensor cores) replace
    BT - 2 dependent row-by-row substitution steps, which ran at a few percent of the card's speed.
    This is block triangular inversion, not a truncated power series: it is exact in exact arithmetic.
    BY_BLOCKS: reach X_16 on the 16 x 16 diagonal blocks alone (diagonal_blocks_inverse), then double on
    the full tile; for BT = 64 that is 4 full products instead of 10 (the default since the H100 timing:
    the wy launch 17% faster, docs/kernels.md v4).
    """
    rows = tl.arange(0, BT)[:, None]
    cols = tl.arange(0, BT)[None, :]
    if BY_BLOCKS:
        X = diagonal_blocks_inverse(A, BT, DOT_PRECISION)
    else:
        # b = 1: X_2 = I - A restricted to the entries just below the diagonal of each 2 x 2 block.
        X = tl.where(rows == cols, 1.0, 0.0) - tl.where((rows // 2 == cols // 2) & (rows > cols), A, 0.0)
    for step in tl.static_range(1, 8):  # unrolled; blocks of b = 2, 4, ..., BT / 2 rows
        b = 1 << step
        if b < BT and (b >= 16 or not BY_BLOCKS):
            lower_left = (rows // (2 * b) == cols // (2 * b)) & (rows // b > cols // b)
            A_b = tl.where(lower_left, A, 0.0)
            X = X - dot(X, dot(A_b, X, DOT_PRECISION), DOT_PRECISION)
    return X


def chunk_tables(cu_seqlens: torch.Tensor | None, batch: int, seq_len: int, chunk_size: int):
    """Chunk bookkeeping: (number of chunks, chunk_indices int32 [NC, 2], chunk_offsets int32 [N + 1]).

    For fixed-length batches the kernels compute the same from T, so the tables are None (no sync).
    Packed batches: one read of cu_seqlens (the only wait for the GPU), the tables built on the host,
    and one asynchronous upload from pinned memory.
    """
    if cu_seqlens is None:
        return batch * cdiv(seq_len, chunk_size), None, None
    # built and uploaded once per cu_seqlens tensor (every layer's forward and backward use the same)
    return memoized(cu_seqlens, ("chunk_tables", seq_len, chunk_size),
                    lambda: _build_chunk_tables(cu_seqlens, chunk_size))


def _build_chunk_tables(cu_seqlens: torch.Tensor, chunk_size: int):
    offsets = np.asarray(host_offsets(cu_seqlens), dtype=np.int64)
    chunks = -(-np.diff(offsets) // chunk_size)
    chunk_offsets = np.concatenate([[0], np.cumsum(chunks)])
    total = int(chunk_offsets[-1])
    seq_of_chunk = np.repeat(np.arange(len(chunks)), chunks)
    index_in_seq = np.arange(total) - chunk_offsets[seq_of_chunk]
    pairs = np.stack([seq_of_chunk, index_in_seq], axis=1).ravel()
    table = torch.from_numpy(np.concatenate([pairs, chunk_offsets]).astype(np.int32))
    if cu_seqlens.device.type == "cuda":
        table = table.pin_memory().to(cu_seqlens.device, non_blocking=True)
    return total, table[: 2 * total].view(total, 2), table[2 * total :]


# Launch settings per kernel, chosen from timings on an H100 (docs/kernels.md); benchmarks/sweep_launch.py
# overrides them to sweep. block_v: value columns per program (capped by the value dim).
# The state passes use block_v when that gives at least one program per multiprocessor, else
# block_v_small (more programs for the sequential pass: long sequences with few heads). fuse_output:
# "auto", True or False (see state.fuse_output_in_state_pass).
LAUNCH = {
    # inverse: "doubling" (full-tile recursive doubling) or "blocks16" (16 x 16 diagonal blocks first,
    # diagonal_blocks_inverse): the wy launch 0.197 -> 0.167 ms at B=8 T=2048 H=16, 0.106 -> 0.088 ms at the
    # 340M model's H=8 (H100, 2026-11-27, benchmarks/sweep_launch.py --only wy).
    "wy": {"num_warps": 4, "block_v": 64, "inverse": "blocks16"},
    "state": {"num_warps": 4, "block_v": 64, "block_v_small": 32, "fuse_output": True},
    "output": {"num_warps": 4, "block_v": 64},
    "bwd_direct": {"num_warps": 4, "block_v": 64, "block_k": 64},
    "bwd_through_wy": {"num_warps": 4, "block_v": 64},
    # saved: what the forward keeps for the backward, "inputs" (recompute the rest) or "intermediates"
    # (chunk.py's docstring): forward+backward 1.18-1.26x faster at H=16 with the op's own peak memory
    # unchanged (the recompute allocated the same tensors); a 24-layer 340M model keeps ~4 GiB more
    # (benchmarks/op_variants.py and the model benchmark, H100, 2026-11-27).
    "backward": {"saved": "intermediates"},
}


def set_launch(assignment: str, table: dict | None = None) -> None:
    """Apply "KERNEL.KEY=VALUE" to a launch table (benchmarks' --launch option; default this module's LAUNCH):
    VALUE is a Python literal (4, True, "auto") or else a bare string (blocks16), of the current value's type
    (state.fuse_output also takes "auto"). Unknown kernels and keys, and values of another type, are errors
    that name what is known or expected."""
    import ast

    table = LAUNCH if table is None else table
    target, sep, text = assignment.partition("=")
    kernel, dot_, key = target.partition(".")
    if not sep or not dot_:
        raise ValueError(f"launch setting must look like KERNEL.KEY=VALUE, got {assignment!r}")
    if kernel not in table:
        raise ValueError(f"unknown kernel {kernel!r} in {assignment!r}; known: {', '.join(table)}")
    if key not in table[kernel]:
        raise ValueError(f"unknown key {key!r} for {kernel!r}; known: {', '.join(table[kernel])}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    current = table[kernel][key]
    if key == "fuse_output":  # True, False or "auto"
        if not (value is True or value is False or value == "auto"):
            raise ValueError(f"{kernel}.{key} takes True, False or 'auto' (now {current!r}), got {text!r}")
    elif type(value) is not type(current):
        raise ValueError(f"{kernel}.{key} takes a {type(current).__name__} (now {current!r}), got {text!r}")
    table[kernel] = {**table[kernel], key: value}


def num_stages_for(dtype: torch.dtype) -> int:
    """Software-pipelining depth: float32 tiles are twice the bytes, and 2 stages overflow shared memory."""
    return 1 if dtype == torch.float32 else 2


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host code. triton.cdiv and triton.next_power_of_2 are Triton constexpr functions:
    called from Python they cost a few microseconds each (argument unwrapping), ~10 per op call."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for host code; see cdiv."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def multiprocessor_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: any value works
    return torch.cuda.get_device_properties(device).multi_processor_count


def block_dim(d: int) -> int:
    """Tile width for a head dim: a power of two, at least 16 (the smallest tl.dot size)."""
    return max(16, next_power_of_2(d))


# custom op -> the Python function it was made from (kernel_op), for call_op's direct route.
_IMPLEMENTATIONS: dict = {}


def on_tensors_device(implementation):
    """implementation, run with the current CUDA device set to that of its first CUDA tensor argument:
    Triton launches on the current device, and a model split across GPUs calls ops on several."""

    @functools.wraps(implementation)
    def run(*args):
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.is_cuda:
                if arg.device.index != torch.cuda.current_device():
                    with torch.cuda.device(arg.device):
                        return implementation(*args)
                break
        return implementation(*args)

    return run


def kernel_op(name: str):
    """Decorator: torch.library.custom_op(name, mutates_args=()) over a function that launches kernels (run
    on its tensors' device), which also remembers the function so that call_op can run it without the
    dispatcher."""

    def register(implementation):
        implementation = on_tensors_device(implementation)
        op = torch.library.custom_op(name, mutates_args=())(implementation)
        _IMPLEMENTATIONS[op] = implementation
        return op

    return register


PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def call_op(op, *args):
    """op(*args), through the dispatcher only where that does something.

    The direct route (the function behind the op, no dispatcher) is taken outside torch.compile, with no
    dispatch or function mode active, the profiler off, only plain tensors and parameters among the
    arguments (fake, functional, subclass and meta tensors need the registered fake implementations), and no
    argument that requires grad while grad mode is on (so that a double backward through the op's backward
    still fails loudly instead of dropping the second-order term). The dispatcher's layers for a Python
    custom op (a dynamo-disable wrapper, alias checks) cost ~20 us of host time per call, measured on the CPU
    machine with kernel launches stubbed out (2026-11-27).
    """
    implementation = _IMPLEMENTATIONS.get(op)
    if (implementation is None or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._is_torch_function_mode_enabled() or torch.autograd.profiler._is_profiler_enabled):
        return op(*args)
    grad_mode = torch.is_grad_enabled()
    for arg in args:
        if not isinstance(arg, torch.Tensor):
            continue
        if type(arg) not in PLAIN_TENSOR_TYPES or arg.is_meta or (grad_mode and arg.requires_grad):
            return op(*args)
    return implementation(*args)


def eager_autograd(op, setup_context, backward):
    """A custom op's autograd formula as a plain torch.autograd.Function in eager mode.

    op: a custom op made with kernel_op; setup_context, backward: the functions given to its
    register_autograd (backward should call the backward op through call_op). Returns a function with op's
    signature. Under torch.compile it calls op itself (one node in the graph, no break); in eager mode it runs
    the op's function inside an autograd.Function, which skips the custom op's own autograd layer: a profile
    of the 340M model's eager step on an H100 machine (2026-11-27) put ~0.2 ms of host time per call in that
    layer's backward wrapper alone, about 50 ms per step, while eager training was bound by the host.
    """

    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = call_op(op, *args)  # grad mode is off inside forward: no autograd layer of op's own
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return EagerFunction.apply(*args)

    return call
