"""Token dispatch: top-k choice, capacity with batch-prioritized routing, permutation.

The layer never builds a [tokens x experts x capacity] one-hot tensor. Every (token, choice) pair
gets a slot in one flat list of fixed length k*T: the pairs that survive the capacity limit first,
sorted by expert (``expert_ends[e]`` is where expert e's block ends), then the dropped pairs. The
experts run on the contiguous blocks and the outputs are scattered back with an index-add; dropped
slots contribute nothing.

Planning is pure tensor work with static shapes (sorts, cumulative sums, scatters, no boolean
indexing, no ``.item()``/``.tolist()``), so on a GPU it queues without a single host sync, and
``torch.compile`` traces it without graph breaks. Routing decisions carry no gradient; only the
gate values (and the gathered tokens) do.

Capacity is counted per **group** of tokens. In training the group is the whole batch (the
authors' rule, C = k * int(capacity_factor * ceil(T / E))); a group may also be one image, so that
an image's routing never depends on the other images of its batch (the evaluation default, see
``SparseMoE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class DispatchPlan:
    """Which (token, choice) pairs go to which expert, as k*T slots grouped by expert.

    ``slot_token[i]`` / ``slot_choice[i]`` name the pair in slot i. Slots ``[0, expert_ends[-1])``
    are kept pairs sorted by expert (expert e owns ``[expert_ends[e-1], expert_ends[e])``; within an
    expert, in arrival (priority) order); the rest are dropped pairs (``slot_kept`` False).
    """

    slot_token: torch.Tensor   # [k*T] long
    slot_choice: torch.Tensor  # [k*T] long
    slot_kept: torch.Tensor    # [k*T] bool
    expert_ends: torch.Tensor  # [E] int32, cumulative kept pairs per expert (grouped_mm's offsets)
    dropped: torch.Tensor      # [T, k] bool, True where a choice found its expert full
    capacity: int | None       # slots per expert per group, None = dropless

    @property
    def expert_counts(self) -> list[int]:
        """Kept pairs per expert, on the host (one device sync: for analyses, tests and the loop
        over experts, never for planning)."""
        ends = self.expert_ends.tolist()
        return [end - start for start, end in zip([0] + ends[:-1], ends)]


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


def count_per_expert(expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many entries of ``expert_index`` name each expert ([E] long). Unlike ``torch.bincount``,
    whose output size depends on the data, this never waits for the device."""
    flat = expert_index.reshape(-1)
    return torch.zeros(num_experts, dtype=torch.long, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat))


@torch.no_grad()
def plan_dispatch(expert_index: torch.Tensor, priority: torch.Tensor | None, num_experts: int,
                  capacity: int | None, num_groups: int = 1) -> DispatchPlan:
    """Assign slots with batch-prioritized routing, capacity counted per group.

    Tokens are ``num_groups`` equal consecutive groups (1: the whole batch). Pairs arrive
    choice-major (all first choices, then all second choices, ...) and, within a choice, by
    descending ``priority`` (the token's highest gate probability; ties by token index). Each pair
    takes the next free slot of its expert in its group; pairs reaching a full expert are dropped.
    A stable sort by (expert, group) gives each pair's arrival rank there; a second stable sort puts
    the kept pairs first, grouped by expert.
    """
    num_tokens, top_k = expert_index.shape
    device = expert_index.device
    if num_tokens % num_groups:
        raise ValueError(f"{num_tokens} tokens do not split into {num_groups} equal groups")
    if capacity is None or priority is None:
        token_order = torch.arange(num_tokens, device=device)
    else:
        token_order = torch.sort(priority, descending=True, stable=True).indices
    arrival_token = token_order.repeat(top_k)                                          # [k*T]
    arrival_choice = torch.arange(top_k, device=device).repeat_interleave(num_tokens)  # [k*T]
    arrival_expert = expert_index[arrival_token, arrival_choice]

    if capacity is None:
        keep_by_arrival = torch.ones_like(arrival_token, dtype=torch.bool)
    else:
        group = arrival_token // (num_tokens // num_groups)
        bucket = arrival_expert * num_groups + group                                    # (expert, group)
        by_bucket = torch.sort(bucket, stable=True).indices
        sizes = count_per_expert(bucket, num_experts * num_groups)
        bucket_start = sizes.cumsum(0) - sizes
        rank = torch.arange(by_bucket.numel(), device=device) - bucket_start[bucket[by_bucket]]
        keep_by_arrival = torch.empty_like(arrival_token, dtype=torch.bool)
        keep_by_arrival[by_bucket] = rank < capacity

    # kept pairs by expert, then every dropped pair (sort key E)
    slot_key = torch.where(keep_by_arrival, arrival_expert, num_experts)
    order = torch.sort(slot_key, stable=True).indices
    kept_per_expert = count_per_expert(slot_key, num_experts + 1)[:num_experts]
    dropped = torch.zeros(num_tokens, top_k, dtype=torch.bool, device=device)
    dropped[arrival_token, arrival_choice] = ~keep_by_arrival
    return DispatchPlan(slot_token=arrival_token[order], slot_choice=arrival_choice[order],
                        slot_kept=keep_by_arrival[order],
                        expert_ends=kept_per_expert.cumsum(0).to(torch.int32),
                        dropped=dropped, capacity=capacity)


def gather_tokens(x: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
    """[T, D] tokens -> [k*T, D] slots (expert-sorted kept pairs first)."""
    return x.index_select(0, plan.slot_token)


def scatter_outputs(expert_out: torch.Tensor, gates: torch.Tensor, plan: DispatchPlan,
                    num_tokens: int) -> torch.Tensor:
    """[k*T, D] expert outputs -> [T, D]: sum over a token's kept choices of gate x output.

    Dropped slots contribute nothing: their rows are selected away before the gate multiplies, so
    neither their values nor a gradient through them reach anything; a fully dropped token gets 0
    (residual only).
    """
    slot_gates = gates[plan.slot_token, plan.slot_choice].to(expert_out.dtype)
    weighted = torch.where(plan.slot_kept.unsqueeze(-1), expert_out, 0.0) * slot_gates.unsqueeze(-1)
    out = expert_out.new_zeros(num_tokens, expert_out.shape[-1])
    return out.index_add(0, plan.slot_token, weighted)
