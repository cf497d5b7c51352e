"""Sparse mixture-of-experts layers (router, dispatch, experts, balancing losses, config, statistics)."""

from .dispatch import DispatchPlan, expert_capacity, gather_tokens, plan_dispatch, scatter_outputs, top_k_gating
from .experts import BatchedExperts
from .config import MoEConfig
from .layer import RoutingRecord, SparseMoE, collect_aux_loss, moe_layers, pop_aux_losses
from .losses import importance_load_loss, importance_loss, load_loss, switch_balance_loss
from .router import CosineRouter, LinearRouter, build_router
from .stats import routing_counts, routing_shares, routing_stats

__all__ = [
    "SparseMoE", "MoEConfig", "RoutingRecord", "moe_layers", "pop_aux_losses", "collect_aux_loss",
    "routing_counts", "routing_shares", "routing_stats",
    "CosineRouter", "LinearRouter", "build_router", "BatchedExperts",
    "DispatchPlan", "expert_capacity", "top_k_gating", "plan_dispatch", "gather_tokens", "scatter_outputs",
    "importance_loss", "load_loss", "importance_load_loss", "switch_balance_loss",
]
