"""Routers: map each token to one logit per expert.

Both routers compute in float32 with autocast disabled: the softmax over experts and the top-k
choice are sensitive to rounding, and the router is a tiny share of the layer's work.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LOG_SCALE = math.log(100.0)


def _float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


class CosineRouter(nn.Module):
    """logits_e = s * cos(W_p x + b_p, c_e), s = exp(min(t, ln 100)) (GMoE's cosine router).

    Projecting to a low dimension and comparing directions (not lengths) keeps routing stable when
    token norms differ between domains; the learned scale sets how peaked the softmax is.
    """

    def __init__(self, dim: int, num_experts: int, proj_dim: int = 256, init_scale: float = 2.0):
        super().__init__()
        self.num_experts = num_experts
        self.projection = nn.Linear(dim, proj_dim, bias=True)
        self.expert_embeddings = nn.Parameter(torch.empty(proj_dim, num_experts))
        self.log_scale = nn.Parameter(torch.full((1,), math.log(init_scale)))
        nn.init.normal_(self.expert_embeddings, mean=0.0, std=0.01)

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=MAX_LOG_SCALE).exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = F.linear(_float32(x), _float32(self.projection.weight),
                         None if self.projection.bias is None else _float32(self.projection.bias))
            h = F.normalize(h, dim=-1)
            experts = F.normalize(_float32(self.expert_embeddings), dim=0)
            return self.scale() * (h @ experts)


class LinearRouter(nn.Module):
    """logits = W_g x, no bias (the Switch / V-MoE baseline router)."""

    def __init__(self, dim: int, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(_float32(x), _float32(self.weight))


def build_router(kind: str, dim: int, num_experts: int, router_dim: int = 256) -> nn.Module:
    if kind == "cosine":
        return CosineRouter(dim, num_experts, proj_dim=router_dim)
    if kind == "linear":
        return LinearRouter(dim, num_experts)
    raise ValueError(f"unknown router '{kind}'; use 'cosine' or 'linear'")
