"""One run on several processes (``torchrun``): who am I, and helpers that are no-ops on one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, batch_size: int) -> slice:
        """This process's share of a global per-domain batch (the global batch is split, not copied)."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {self.world_size} "
                             "processes; choose a multiple so every process gets an equal share")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over processes: the loss of the whole global batch, and the same
        NaN check outcome on every process."""
        if not self.enabled:
            return values
        keys = sorted(values)
        summed = torch.tensor([values[key] for key in keys], dtype=torch.float64)
        dist.all_reduce(summed)
        return dict(zip(keys, (summed / self.world_size).tolist()))

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order (a one-item list on one process)."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def init_distributed() -> DistEnv:
    """Join the process group torchrun set up (nccl on GPU, gloo on CPU); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    env = DistEnv(rank=int(os.environ["RANK"]), world_size=world_size,
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend)
    return env


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
