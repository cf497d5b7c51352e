"""A bank of FFN experts with stacked weights, run on expert-sorted token blocks."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


IMPLEMENTATIONS = ("auto", "loop", "grouped")


def _grouped_mm_function():
    """PyTorch's grouped GEMM (public from 2.10 as ``F.grouped_mm``; ``torch._grouped_mm`` before)."""
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def _grouped_mm(x: torch.Tensor, weight_t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    return _grouped_mm_function()(x, weight_t, offs=ends)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: autocast's, where it is on."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def grouped_mm_unavailable_reason(x: torch.Tensor) -> str | None:
    """Why the grouped expert path cannot run on ``x``'s device here, or None if it can."""
    if _grouped_mm_function() is None:
        return f"PyTorch {torch.__version__} has no grouped_mm"
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (9, 0):
        return "grouped_mm needs a Hopper-class GPU (compute capability 9.0) or newer"
    return None


def grouped_mm_supported(x: torch.Tensor, dim: int, hidden_dim: int) -> bool:
    """Whether the grouped expert path can run on ``x``: a grouped_mm in this PyTorch, a GPU it
    supports, and widths whose rows are 16-byte aligned (multiples of 8), as its kernels need."""
    return grouped_mm_unavailable_reason(x) is None and dim % 8 == 0 and hidden_dim % 8 == 0


class BatchedExperts(nn.Module):
    """E two-layer FFNs (fc1 -> act -> dropout -> fc2) stored as stacked tensors.

    Weights follow ``nn.Linear``'s (out, in) layout per expert: fc1_weight [E, H, D],
    fc1_bias [E, H], fc2_weight [E, D, H], fc2_bias [E, D]. Stacking keeps one parameter per
    role, so every expert always receives a gradient (zeros when it got no tokens), which DDP
    needs, and the state dict maps 1:1 to the authors' batched layout.
    """

    def __init__(self, num_experts: int, dim: int, hidden_dim: int,
                 act_layer: Callable[[], nn.Module] = nn.GELU, dropout: float = 0.0, bias: bool = True,
                 implementation: str = "auto"):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown experts implementation {implementation!r}; use one of {', '.join(IMPLEMENTATIONS)}")
        self.implementation = implementation
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

    def forward(self, x: torch.Tensor, expert_ends: torch.Tensor) -> torch.Tensor:
        """[S, D] slots, expert e's rows ending at ``expert_ends[e]`` -> [S, D]; rows past the last
        expert's end (dropped pairs) come out as exact zeros.

        ``implementation`` picks how: "grouped" runs each layer of all experts as one grouped GEMM
        (``torch.nn.functional.grouped_mm``) with no host sync; "loop" runs one dense matmul per
        non-empty expert block (the block sizes cost one sync); "auto" takes grouped where it is
        fast (see ``grouped_mm_supported``) and the loop elsewhere (the CPU). Both do the work of a
        dense FFN over the kept rows only, without padding.
        """
        if expert_ends.numel() != self.num_experts:
            raise ValueError(f"expected {self.num_experts} expert ends, got {expert_ends.numel()}")
        if self._use_grouped(x):
            return self._forward_grouped(x, expert_ends)
        return self._forward_loop(x, expert_ends)

    def _use_grouped(self, x: torch.Tensor) -> bool:
        if self.implementation == "loop":
            return False
        supported = grouped_mm_supported(x, self.dim, self.hidden_dim)
        if self.implementation == "grouped":
            if not supported:
                raise RuntimeError(f"grouped expert matmuls are not available here "
                                   f"({grouped_mm_unavailable_reason(x)}); use implementation='loop' or 'auto'")
            return True
        # auto: the GPU kernels are bf16/fp16 ones (Hopper); fp32 work, and the CPU, take the loop
        return supported and x.is_cuda and _compute_dtype(x) in (torch.bfloat16, torch.float16)

    def _forward_loop(self, x: torch.Tensor, expert_ends: torch.Tensor) -> torch.Tensor:
        ends = expert_ends.tolist()  # the one host sync: block sizes for the Python loop
        starts = [0] + ends[:-1]
        w1, w2 = self.fc1_weight.unbind(0), self.fc2_weight.unbind(0)  # unbind: one stacked grad
        b1 = self.fc1_bias.unbind(0) if self.fc1_bias is not None else [None] * self.num_experts
        b2 = self.fc2_bias.unbind(0) if self.fc2_bias is not None else [None] * self.num_experts
        outputs = []
        for e, (start, end) in enumerate(zip(starts, ends)):
            if end == start:
                continue
            h = self.act(F.linear(x[start:end], w1[e], b1[e]))
            if self.drop.p > 0:
                h = self.drop(h)
            outputs.append(F.linear(h, w2[e], b2[e]))
        kept = ends[-1]
        if kept < x.shape[0] or not outputs:
            outputs.append(x.new_zeros(x.shape[0] - kept, self.dim))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _forward_grouped(self, x: torch.Tensor, expert_ends: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        rows = torch.arange(x.shape[0], device=x.device)
        kept = (rows < expert_ends[-1]).unsqueeze(-1)
        # Grouped GEMMs leave the rows past the last end unwritten, in their outputs and in the
        # gradients they return: every such row is selected away (torch.where, which stops a
        # gradient where multiplying by zero would pass a NaN on) before anything reads it.
        x = torch.where(kept, x, 0.0).to(dtype)
        row_expert = torch.searchsorted(expert_ends, rows.to(expert_ends.dtype), right=True).clamp_(
            max=self.num_experts - 1)
        h = torch.where(kept, _grouped_mm(x, self.fc1_weight.to(dtype).transpose(-2, -1), expert_ends), 0.0)
        if self.fc1_bias is not None:
            h = h + self.fc1_bias.to(dtype)[row_expert]
        h = self.act(h)
        if self.drop.p > 0:
            h = self.drop(h)
        h = torch.where(kept, h, 0.0)  # dropped rows hold act(bias), and fc2's backward leaves them unwritten
        out = _grouped_mm(h, self.fc2_weight.to(dtype).transpose(-2, -1), expert_ends)
        if self.fc2_bias is not None:
            out = out + self.fc2_bias.to(dtype)[row_expert]
        return torch.where(kept, out, 0.0)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}"
