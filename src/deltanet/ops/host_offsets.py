"""cu_seqlens read on the host once per tensor, not once per use; and what is derived from it, memoised.

Packed (varlen) batches need the document offsets on the host: to validate them with a clear error and to
lay out the chunk tables. Reading a CUDA tensor on the host waits for the GPU to drain, and the GPU then
idles while Python launches the next kernels. One forward and backward of a packed model calls the ops of
every layer with the same cu_seqlens (validation, conv, chunk forward, chunk backward): remembering the
values per tensor turns 4 waits per layer into one per step (none when the caller tells the values,
remember_host_offsets). The tables built from them (chunk tables, each token's position in its document)
are memoised on the same tensor, so that each layer does not rebuild and upload them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

# id(tensor) -> (weak reference to it, its version counter when read, {key: value derived from it}). The weak
# reference tells a live tensor from a new one at a recycled id; the version counter catches in-place writes.
_MEMO: dict[int, tuple[weakref.ref, int, dict[Hashable, Any]]] = {}


def _entries(tensor: torch.Tensor) -> dict[Hashable, Any]:
    """The memo of a live, unchanged tensor (a fresh one otherwise); drops the entries of dead tensors."""
    key = id(tensor)
    entry = _MEMO.get(key)
    if entry is not None and entry[0]() is tensor and entry[1] == tensor._version:
        return entry[2]
    for stale in [k for k, (ref, _, _) in list(_MEMO.items()) if ref() is None]:
        del _MEMO[stale]
    values: dict[Hashable, Any] = {}
    _MEMO[key] = (weakref.ref(tensor), tensor._version, values)
    return values


def memoized(tensor: torch.Tensor, key: Hashable, build: Callable[[], Any]) -> Any:
    """build(), computed once per (tensor, key) while the tensor lives unchanged.

    Writes that bypass the version counter (through `.data`, or memory shared with numpy) are not seen:
    don't modify a cu_seqlens in place that way while it is in use. Inference tensors (made under
    torch.inference_mode) have no version counter, and under torch.compile's tracing nothing is memoised:
    build() runs each time.
    """
    if torch.compiler.is_compiling() or tensor.is_inference():  # (is_inference() would break the graph)
        return build()
    entries = _entries(tensor)
    if key not in entries:
        entries[key] = build()
    return entries[key]


def host_offsets(cu_seqlens: torch.Tensor) -> tuple[int, ...]:
    """The values of a 1-D integer tensor as a tuple of ints; one device-to-host read per tensor while it
    lives unchanged."""
    return memoized(cu_seqlens, "host_offsets", lambda: tuple(cu_seqlens.tolist()))


def remember_host_offsets(cu_seqlens: torch.Tensor, values: Sequence[int]) -> None:
    """Tell host_offsets the values of cu_seqlens, known on the host already (for example a training batch
    whose offsets were computed on the CPU before the copy to the GPU): then no op has to read them back."""
    _entries(cu_seqlens)["host_offsets"] = tuple(int(v) for v in values)
