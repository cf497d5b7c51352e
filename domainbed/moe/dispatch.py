"""Token dispatch: top-k choice, capacity with batch-prioritized routing, permutation.

The layer never builds a [tokens x experts x capacity] one-hot tensor. Instead, every
(token, choice) pair that survives the capacity limit gets a slot in one flat list sorted by
expert; the experts then run on contiguous blocks of that list and the outputs are scattered
back with an index-add. Routing decisions are index computations without gradient; only the
gate values (and the gathered tokens) carry gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class DispatchPlan:
    """Which (token, choice) pairs go to which expert, grouped by expert.

    ``slot_token[i]`` / ``slot_choice[i]`` name the i-th kept pair; slots are sorted by expert,
    ``expert_counts[e]`` slots per expert, and within one expert in arrival (priority) order.
    """

    slot_token: torch.Tensor   # [S] long
    slot_choice: torch.Tensor  # [S] long
    expert_counts: list[int]   # length E, sum S
    dropped: torch.Tensor      # [T, k] bool, True where a choice found its expert full
    capacity: int | None       # slots per expert, None = dropless


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float | None) -> int | None:
    """C = k * int(capacity_factor * ceil(T / E)) (the authors' rule); None means dropless."""
    if capacity_factor is None:
        return None
    return top_k * int(capacity_factor * math.ceil(num_tokens / num_experts))


def top_k_gating(probs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen experts [T, k] and their gates [T, k].

    k = 1: the gate is the chosen probability itself (so the router gets a gradient);
    k > 1: the chosen probabilities renormalised to sum to 1.
    """
    gates, expert_index = probs.topk(top_k, dim=-1)
    if top_k > 1:
        gates = gates / gates.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(gates.dtype).tiny)
    return expert_index, gates


@torch.no_grad()
def plan_dispatch(expert_index: torch.Tensor, priority: torch.Tensor | None, num_experts: int,
                  capacity: int | None) -> DispatchPlan:
    """Assign slots with batch-prioritized routing.

    Pairs arrive choice-major (all first choices, then all second choices, ...) and, within a
    choice, by descending ``priority`` (the token's highest gate probability; ties by token
    index). Each pair takes its expert's next free slot; pairs reaching a full expert are dropped.
    One stable sort by expert gives both the grouping and each pair's arrival rank in its expert.
    """
    num_tokens, top_k = expert_index.shape
    device = expert_index.device
    if capacity is None or priority is None:
        token_order = torch.arange(num_tokens, device=device)
    else:
        token_order = torch.sort(priority, descending=True, stable=True).indices
    arrival_token = token_order.repeat(top_k)                                        # [k*T]
    arrival_choice = torch.arange(top_k, device=device).repeat_interleave(num_tokens)  # [k*T]
    arrival_expert = expert_index[arrival_token, arrival_choice]

    by_expert = torch.sort(arrival_expert, stable=True).indices
    counts = torch.bincount(arrival_expert, minlength=num_experts)
    dropped = torch.zeros(num_tokens, top_k, dtype=torch.bool, device=device)
    if capacity is not None:
        group_start = counts.cumsum(0) - counts
        rank_in_expert = torch.arange(by_expert.numel(), device=device) - group_start[arrival_expert[by_expert]]
        keep = rank_in_expert < capacity
        lost = by_expert[~keep]
        dropped[arrival_token[lost], arrival_choice[lost]] = True
        by_expert = by_expert[keep]
        counts = counts.clamp(max=capacity)
    return DispatchPlan(slot_token=arrival_token[by_expert], slot_choice=arrival_choice[by_expert],
                        expert_counts=counts.tolist(), dropped=dropped, capacity=capacity)


def gather_tokens(x: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
    """[T, D] tokens -> [S, D] expert-sorted slots."""
    return x.index_select(0, plan.slot_token)


def scatter_outputs(expert_out: torch.Tensor, gates: torch.Tensor, plan: DispatchPlan,
                    num_tokens: int) -> torch.Tensor:
    """[S, D] expert outputs -> [T, D]: sum over a token's kept choices of gate x output.

    Dropped choices contribute nothing, so a fully dropped token gets 0 (residual only).
    """
    slot_gates = gates[plan.slot_token, plan.slot_choice].to(expert_out.dtype)
    out = expert_out.new_zeros(num_tokens, expert_out.shape[-1])
    return out.index_add(0, plan.slot_token, expert_out * slot_gates.unsqueeze(-1))
