"""One run on several processes (``torchrun``): who am I, and helpers that are no-ops on one process.

Gradients are averaged where they are applied: under torchrun, every ``optimizer.step()`` first
averages the gradients it is about to apply over the processes (Horovod's DistributedOptimizer
design), instead of wrapping modules in DistributedDataParallel. Half of DomainBed's algorithms
compute gradients with ``torch.autograd.grad`` and write them into ``.grad`` themselves (MLDG,
ANDMask, IGA, Fishr...), which DDP's backward hooks never see; several keep more than one
optimizer (DANN) or build one per step (Fish). Averaging at the step covers all of them with no
change to the algorithm: what trains is exactly what the algorithm's optimizers update.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook


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

    def mean(self, values: dict, device: torch.device) -> dict:
        """Each value (float or 0-dim tensor) averaged over processes, as tensors on ``device`` (NCCL
        reduces only device tensors; nothing waits for the result): the loss of the whole global
        batch, and the same NaN check outcome on every process."""
        if not self.enabled:
            return values
        keys = sorted(values)
        stacked = torch.stack([torch.as_tensor(values[key], device=device).detach().float().reshape(())
                               for key in keys])
        dist.all_reduce(stacked)
        return dict(zip(keys, (stacked / self.world_size).unbind()))

    @contextlib.contextmanager
    def gradients_averaged_at_each_step(self):
        """While active, every optimizer averages its gradients over the processes before stepping."""
        if not self.enabled:
            yield
            return
        handle = register_optimizer_step_pre_hook(
            lambda optimizer, args, kwargs: self.average_gradients(optimizer))
        try:
            yield
        finally:
            handle.remove()

    def average_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Replace each gradient ``optimizer`` is about to apply by its mean over the processes. A
        parameter without a gradient here but with one elsewhere gets the mean too (counting 0)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not params:
            return
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                                device=params[0].device)
        dist.all_reduce(has_grad)
        reduced = [p for p, flag in zip(params, has_grad.tolist()) if flag > 0]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in reduced]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(reduced, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

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


def pick_device(name: str, dist_env: DistEnv) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_env.local_rank)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
