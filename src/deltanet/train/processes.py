"""Where a training process stands: its device, and its rank in the process group that torchrun starts.

One process without torchrun; under `torchrun --nproc_per_node N -m deltanet train` the environment holds
RANK, LOCAL_RANK and WORLD_SIZE, and the processes join one group: NCCL between GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from deltanet.train.errors import ConfigError


@dataclass
class Processes:
    """This process's rank among world_size (1 without torchrun), and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value):
        """rank 0's value of a picklable object, on every process (itself without a group)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """tensor summed over the processes, in place (unchanged without a group)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def stop(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# CPU threads of a process that trains on a GPU, unless OMP_NUM_THREADS says otherwise
GPU_HOST_THREADS = 8


def limit_host_threads(device: torch.device) -> None:
    """Caps torch's CPU threads at GPU_HOST_THREADS on a GPU, unless OMP_NUM_THREADS is set.

    Why: torch starts one thread per core, and the host's share of a GPU step is many small CPU ops
    (packing rows, document offsets, copies). On a 64-core host each of those paid for its 64 threads:
    deltanet-small's step took 126-142 ms alone and ~400 ms with four runs on the host, against 54 ms alone
    and 48-60 ms with four with 8 threads each (H100s, docs/results.md). Training on the CPU (device cpu)
    keeps every core."""
    if device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), GPU_HOST_THREADS))


def start_processes(device_name: str) -> Processes:
    """The device ('auto', 'cpu', 'cuda' or 'cuda:N'; under torchrun 'cuda' means the local rank's GPU) and
    the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    name = device_name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device_name!r} asked for, but CUDA is not available on this machine")
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device} asked for, but this machine has {torch.cuda.device_count()} "
                              f"GPUs")
        torch.cuda.set_device(device)
        limit_host_threads(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world_size, device)
