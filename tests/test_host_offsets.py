"""cu_seqlens is read on the host once per tensor, and read again after an in-place write."""

from __future__ import annotations

import torch

from deltanet.ops.host_offsets import host_offsets


class CountingTensor(torch.Tensor):
    """A tensor subclass that counts its host reads."""

    reads = 0

    def tolist(self):
        CountingTensor.reads += 1
        return super().tolist()


def test_host_offsets_reads_once_per_tensor_and_again_after_a_write():
    cu = torch.tensor([0, 3, 7, 10], dtype=torch.int32).as_subclass(CountingTensor)
    CountingTensor.reads = 0
    assert host_offsets(cu) == (0, 3, 7, 10)
    assert host_offsets(cu) == (0, 3, 7, 10)
    assert CountingTensor.reads == 1
    cu[1] = 4  # an in-place write bumps the version counter: the values are read again
    assert host_offsets(cu) == (0, 4, 7, 10)
    assert CountingTensor.reads == 2


def test_host_offsets_never_returns_a_dead_tensors_values():
    # ids get recycled as tensors die (a memo keyed by id alone fails this loop a few times in 50); each new
    # tensor must give its own values.
    for n in range(50):
        cu = torch.tensor([0, n, 100])
        assert host_offsets(cu) == (0, n, 100)
        del cu


def test_host_offsets_of_inference_tensors():
    with torch.inference_mode():
        cu = torch.tensor([0, 4, 10])
    assert host_offsets(cu) == (0, 4, 10)  # no version counter: read every time, no error
