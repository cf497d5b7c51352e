"""The parts of a checkpoint record, one class per kind of value.

The loop asks each for its share at every checkpoint: the algorithm's mean update values
(``LossValues``), ``step_time``/``mem_gb`` (``Timing``), per-split accuracies of the evaluation
model (``Accuracies``) and, on MoE backbones, how training tokens were routed
(``RoutingStatistics``). Each accumulates between checkpoints and resets when taken.
"""

from __future__ import annotations

import math
import resource
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..algorithms.base import Validation
from ..moe import moe_layers
from ..moe.stats import routing_counts, routing_shares
from .evaluation import accuracy


class LossValues:
    """The mean of each value ``update`` returned since the last checkpoint, and the first step at
    which one was not finite.

    Values may be Python floats or 0-dim tensors (detached). Tensors are summed where they live and
    read once per checkpoint, so a GPU step never waits for its loss to reach the host; their
    finiteness is tracked on the device too (``first_nonfinite`` reads it).
    """

    def __init__(self):
        self.sums: dict[str, float | torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.bad_step: dict[str, torch.Tensor | int] = {}  # per key: first step with a non-finite value, -1 if none

    def add(self, values: dict, step: int) -> None:
        for key, value in values.items():
            if torch.is_tensor(value):
                value = value.detach().float().reshape(())
                finite = torch.isfinite(value)
                bad = self.bad_step.get(key, -1)
                self.bad_step[key] = torch.where(finite | (torch.as_tensor(bad, device=value.device) >= 0),
                                                 torch.as_tensor(bad, device=value.device), step)
            elif not math.isfinite(value) and self.bad_step.get(key, -1) == -1:
                self.bad_step[key] = step
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def first_nonfinite(self) -> tuple[str, int] | None:
        """(key, step) of the earliest value that was NaN or infinite since the last ``take``."""
        found = [(int(step), key) for key, step in self.bad_step.items() if int(step) >= 0]
        return (min(found)[1], min(found)[0]) if found else None

    def take(self) -> dict[str, float]:
        tensors = [key for key, value in self.sums.items() if torch.is_tensor(value)]
        read = dict(zip(tensors, torch.stack([self.sums[key] for key in tensors]).tolist())) if tensors else {}
        means = {key: float(read.get(key, value)) / self.counts[key] for key, value in self.sums.items()}
        self.sums, self.counts, self.bad_step = {}, {}, {}
        return means


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory (CUDA), or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB -> GB on Linux


class Timing:
    """Mean seconds per training step since the last checkpoint (data loading included, checkpoint
    work excluded), of them the seconds spent waiting for the next batch (``data_time``), and peak
    memory so far. The clock runs from ``start`` to ``take``, where the device is synchronised
    once: GPU steps are queued without waiting, so only the interval measures them. A
    ``data_time`` close to ``step_time`` means the loaders, not the model, set the pace."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start()

    def start(self) -> None:
        self.steps, self.data_seconds, self.started = 0, 0.0, time.perf_counter()

    def add_step(self, data_seconds: float = 0.0) -> None:
        self.steps += 1
        self.data_seconds += data_seconds

    def take(self) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        steps = max(self.steps, 1)
        return {"step_time": (time.perf_counter() - self.started) / steps if self.steps else 0.0,
                "data_time": self.data_seconds / steps, "mem_gb": peak_memory_gb(self.device)}


class Accuracies:
    """``env{i}_{in,out,uda}_acc`` of a model on every evaluation split."""

    def __init__(self, eval_loaders: list, device: torch.device, autocast: Callable):
        self.eval_loaders, self.device, self.autocast = eval_loaders, device, autocast

    def evaluate(self, model) -> dict[str, float]:
        with self.autocast():
            return {f"{name}_acc": accuracy(model, loader, self.device) for name, loader in self.eval_loaders}


class RoutingStatistics:
    """Per MoE layer of the algorithm, which experts the training tokens chose and how many were
    dropped, summed over every training forward since the last checkpoint. Counts stay on the
    device (no sync per step)."""

    def __init__(self, module: torch.nn.Module):
        self.counts: dict[str, torch.Tensor] = {}
        self.dropped: dict[str, torch.Tensor] = {}
        self.handles = [layer.register_forward_hook(self._hook(name))
                        for name, layer in moe_layers(module).items()]

    def _hook(self, name: str):
        def count(layer, inputs, output):
            routing = layer.last_routing
            if not layer.training or routing is None:
                return
            counts, dropped = routing_counts(routing)
            self.counts[name] = self.counts.get(name, 0) + counts
            self.dropped[name] = self.dropped.get(name, 0) + dropped
        return count

    def take(self) -> dict:
        """{"routing": {layer: {"expert_share": [...], "dropped_share": x}}} (shares of token choices,
        summing to 1), or {} on a dense backbone."""
        if not self.handles:
            return {}
        out = {name: routing_shares(counts, self.dropped[name]) for name, counts in self.counts.items()}
        self.counts, self.dropped = {}, {}
        return {"routing": out}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def validation_for(loaders: list, device: torch.device) -> Validation:
    """Mean cross-entropy over the training domains' held-out splits (mean over domains)."""

    def loss(model) -> float:
        per_domain = []
        with torch.no_grad():
            for loader in loaders:
                total, n = torch.zeros((), dtype=torch.float64, device=device), 0
                for x, y in loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    total += F.cross_entropy(model(x).float(), y, reduction="sum")
                    n += len(y)
                per_domain.append(total / max(n, 1))
        return float(torch.stack(per_domain).mean()) if per_domain else 0.0

    return Validation(loss)
