"""cu_seqlens read on the host once per tensor, not once per use.

Packed (varlen) batches need the document offsets on the host: to validate them with a clear error and to
lay out the chunk tables. Reading a CUDA tensor on the host waits for the GPU to drain, and the GPU then
idles while Python launches the next kernels. One forward and backward of a packed model calls the ops of
every layer with the same cu_seqlens (validation, conv, chunk forward, chunk backward): remembering the
values per tensor turns 4 waits per layer into one per step.
"""

from __future__ import annotations

import weakref

import torch

# id(tensor) -> (weak reference to it, its version counter when read, its values). The weak reference
# tells a live tensor from a new one at a recycled id; the version counter catches in-place writes.
_READ: dict[int, tuple[weakref.ref, int, tuple[int, ...]]] = {}


def host_offsets(cu_seqlens: torch.Tensor) -> tuple[int, ...]:
    """The values of a 1-D integer tensor as a tuple of ints; one device-to-host read per tensor while it
    lives unchanged.

    Writes that bypass the version counter (through `.data`, or memory shared with numpy) are not seen:
    don't modify a cu_seqlens in place that way while it is in use. Inference tensors (made under
    torch.inference_mode) have no version counter and are read every time.
    """
    if cu_seqlens.is_inference():
        return tuple(cu_seqlens.tolist())
    key = id(cu_seqlens)
    entry = _READ.get(key)
    if entry is not None and entry[0]() is cu_seqlens and entry[1] == cu_seqlens._version:
        return entry[2]
    values = tuple(cu_seqlens.tolist())
    for stale in [k for k, (ref, _, _) in list(_READ.items()) if ref() is None]:
        del _READ[stale]
    _READ[key] = (weakref.ref(cu_seqlens), cu_seqlens._version, values)
    return values
