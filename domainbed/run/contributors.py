"""The parts of a checkpoint record, one class per kind of value.

The loop asks each for its share at every checkpoint: the algorithm's mean update values
(``LossValues``), ``step_time``/``mem_gb`` (``Timing``), per-split accuracies of the evaluation
model (``Accuracies``) and, on MoE backbones, how training tokens were routed
(``RoutingStatistics``). Each accumulates between checkpoints and resets when taken.
"""

from __future__ import annotations

import resource
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..algorithms.base import Validation
from ..moe import moe_layers
from ..moe.stats import routing_counts, routing_shares
from .evaluation import accuracy


class LossValues:
    """The mean of each value ``update`` returned since the last checkpoint."""

    def __init__(self):
        self.values: dict[str, list[float]] = {}

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.values.setdefault(key, []).append(value)

    def take(self) -> dict[str, float]:
        means = {key: float(np.mean(values)) for key, values in self.values.items()}
        self.values = {}
        return means


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory (CUDA), or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB -> GB on Linux


class Timing:
    """Mean seconds per training step since the last checkpoint, and peak memory so far."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, []

    def add_step(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def take(self) -> dict[str, float]:
        step_time = float(np.mean(self.seconds)) if self.seconds else 0.0
        self.seconds = []
        return {"step_time": step_time, "mem_gb": peak_memory_gb(self.device)}


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
                total, n = 0.0, 0
                for x, y in loader:
                    x, y = x.to(device), y.to(device)
                    total += F.cross_entropy(model(x).float(), y, reduction="sum").item()
                    n += len(y)
                per_domain.append(total / max(n, 1))
        return float(np.mean(per_domain)) if per_domain else 0.0

    return Validation(loss)
