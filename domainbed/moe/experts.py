"""A bank of FFN experts with stacked weights, run on expert-sorted token blocks."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class BatchedExperts(nn.Module):
    """E two-layer FFNs (fc1 -> act -> dropout -> fc2) stored as stacked tensors.

    Weights follow ``nn.Linear``'s (out, in) layout per expert: fc1_weight [E, H, D],
    fc1_bias [E, H], fc2_weight [E, D, H], fc2_bias [E, D]. Stacking keeps one parameter per
    role, so every expert always receives a gradient (zeros when it got no tokens), which DDP
    needs, and the state dict maps 1:1 to the authors' batched layout.
    """

    def __init__(self, num_experts: int, dim: int, hidden_dim: int,
                 act_layer: Callable[[], nn.Module] = nn.GELU, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_dim)) if bias else None
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, dim)) if bias else None
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert initialised like an independent ``nn.Linear`` pair."""
        for weight, bias in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            bound = 1.0 / math.sqrt(weight.shape[-1])
            nn.init.uniform_(weight, -bound, bound)
            if bias is not None:
                nn.init.uniform_(bias, -bound, bound)

    @torch.no_grad()
    def load_from_linear_pair(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        """Copy one dense FFN into every expert (upcycling)."""
        self.fc1_weight.copy_(fc1.weight.unsqueeze(0).expand_as(self.fc1_weight))
        self.fc2_weight.copy_(fc2.weight.unsqueeze(0).expand_as(self.fc2_weight))
        for bias, dense_bias in ((self.fc1_bias, fc1.bias), (self.fc2_bias, fc2.bias)):
            if (bias is None) != (dense_bias is None):
                raise ValueError("expert bias setting differs from the dense FFN's; pass bias to match")
            if bias is not None:
                bias.copy_(dense_bias.unsqueeze(0).expand_as(bias))

    def forward(self, x: torch.Tensor, expert_counts: list[int]) -> torch.Tensor:
        """[S, D] tokens sorted by expert (``expert_counts[e]`` rows each) -> [S, D].

        One dense matmul per non-empty expert block: no padding, so the work is exactly that of
        a dense FFN over S tokens. ``unbind`` (not indexing) keeps backward to one stacked grad.
        """
        if len(expert_counts) != self.num_experts:
            raise ValueError(f"expected {self.num_experts} expert counts, got {len(expert_counts)}")
        w1, w2 = self.fc1_weight.unbind(0), self.fc2_weight.unbind(0)
        b1 = self.fc1_bias.unbind(0) if self.fc1_bias is not None else [None] * self.num_experts
        b2 = self.fc2_bias.unbind(0) if self.fc2_bias is not None else [None] * self.num_experts
        outputs = []
        for e, block in enumerate(x.split(expert_counts)):
            if block.shape[0] == 0:
                continue
            h = self.act(F.linear(block, w1[e], b1[e]))
            if self.drop.p > 0:
                h = self.drop(h)
            outputs.append(F.linear(h, w2[e], b2[e]))
        if not outputs:
            return x.new_zeros(0, self.dim)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}"
