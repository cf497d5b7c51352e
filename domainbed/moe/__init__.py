"""Sparse mixture-of-experts layers: ``router``, ``dispatch``, ``experts``, ``losses``, ``config``
(``MoEConfig``), the composed ``layer`` (``SparseMoE``) and routing ``stats``.

Names import on first use, so that ``domainbed.moe.config`` (the MoE hparam names) is read without
importing torch, as the torch-free commands do.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "SparseMoE": "layer", "RoutingRecord": "layer", "moe_layers": "layer", "pop_aux_losses": "layer",
    "collect_aux_loss": "layer", "MoEConfig": "config",
    "routing_counts": "stats", "routing_shares": "stats", "routing_stats": "stats",
    "CosineRouter": "router", "LinearRouter": "router", "build_router": "router", "BatchedExperts": "experts",
    "DispatchPlan": "dispatch", "expert_capacity": "dispatch", "top_k_gating": "dispatch",
    "plan_dispatch": "dispatch", "count_per_expert": "dispatch", "gather_tokens": "dispatch", "scatter_outputs": "dispatch",
    "importance_loss": "losses", "load_loss": "losses", "importance_load_loss": "losses",
    "switch_balance_loss": "losses",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
