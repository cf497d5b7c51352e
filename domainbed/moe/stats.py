"""Routing statistics: which experts tokens chose and how many were dropped, as plain numbers."""

from __future__ import annotations

import torch
import torch.nn as nn

from .dispatch import count_per_expert
from .layer import RoutingRecord, moe_layers


def routing_counts(routing: RoutingRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """(token choices per expert [E], number of choices dropped) of one forward; stays on device."""
    return count_per_expert(routing.expert_index, routing.num_experts), routing.dropped.sum()


def routing_shares(counts: torch.Tensor, dropped: torch.Tensor) -> dict:
    """{"expert_share": [...], "dropped_share": x}: shares of token choices (expert shares sum to 1)."""
    total = max(int(counts.sum()), 1)
    return {"expert_share": (counts.double() / total).tolist(), "dropped_share": float(dropped) / total}


def routing_stats(module: nn.Module) -> dict[str, dict]:
    """Per MoE layer of ``module``, the shares of its last forward (before capacity: a dropped
    choice still counts for the expert it chose). Plain floats, for JSON records."""
    return {name: routing_shares(*routing_counts(layer.last_routing))
            for name, layer in moe_layers(module).items() if layer.last_routing is not None}
