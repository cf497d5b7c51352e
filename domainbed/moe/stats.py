"""Routing statistics accumulated over training steps, for the records."""

from __future__ import annotations

import torch
import torch.nn as nn

from .layer import moe_layers


class RoutingMeter:
    """Per MoE layer, which experts the training tokens chose and how many were dropped, summed
    over the steps between two checkpoints. Counts stay on the device (no sync per step)."""

    def __init__(self, network: nn.Module):
        self.layers = moe_layers(network)
        self.reset()

    def reset(self) -> None:
        self.counts: dict[str, torch.Tensor] = {}
        self.dropped: dict[str, torch.Tensor] = {}

    def update(self) -> None:
        for name, layer in self.layers.items():
            routing = layer.last_routing
            if routing is None:
                continue
            counts = torch.bincount(routing.expert_index.reshape(-1), minlength=routing.num_experts)
            self.counts[name] = self.counts.get(name, 0) + counts
            self.dropped[name] = self.dropped.get(name, 0) + routing.dropped.sum()

    def summary(self) -> dict:
        """{layer: {"expert_share": [...], "dropped_share": x}}; shares of token choices, sum to 1."""
        out = {}
        for name, counts in self.counts.items():
            total = max(int(counts.sum()), 1)
            out[name] = {"expert_share": (counts.double() / total).tolist(),
                         "dropped_share": float(self.dropped[name]) / total}
        return out


def routing_stats(module: nn.Module) -> dict[str, dict]:
    """Per MoE layer: share of token-choices each expert received (before capacity) and the
    share of token-choices dropped, from the last forward. Plain floats, for JSON records."""
    meter = RoutingMeter(module)
    meter.update()
    return meter.summary()
