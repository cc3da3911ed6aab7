"""Distributed set-up under torchrun (NCCL on GPU, gloo on CPU) and rank-aware helpers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import resolve_device, world


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False        # True when `init_distributed` created the process group (then `shutdown`)

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); otherwise a single process."""
    rank, world_size, local = world()
    device = resolve_device(device_spec, local, option="train.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    if world_size > 1 and (dist.get_world_size() != world_size or dist.get_rank() != rank):
        raise RuntimeError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                           f"RANK={rank} WORLD_SIZE={world_size}")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local, device=device, owns_group=owns)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
