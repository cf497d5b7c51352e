"""SparseMoE: a drop-in, sparsely routed replacement for a ViT block's FFN."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .config import MoEConfig
from .dispatch import expert_capacity, gather_tokens, plan_dispatch, scatter_outputs, top_k_gating
from .experts import BatchedExperts
from .losses import importance_load_loss, switch_balance_loss
from .router import build_router


@dataclass
class RoutingRecord:
    """What the router decided in the last forward (detached), for analyses and records."""

    expert_index: torch.Tensor  # [T, k] long, chosen experts, best first
    gates: torch.Tensor         # [T, k] float, gate values
    dropped: torch.Tensor       # [T, k] bool, choice dropped by the capacity limit
    num_experts: int
    token_shape: tuple[int, ...] = ()  # leading shape of the input, e.g. (B, N); T = prod


class SparseMoE(nn.Module):
    """Top-k routed mixture of FFN experts on [..., D] tokens (e.g. a ViT's [B, N, D]).

    Each token goes to its top-k experts by router probability; its output is the gate-weighted
    sum of those experts' outputs. With ``capacity_factor`` set, each expert takes at most
    C = k * int(capacity_factor * ceil(T / E)) token-choices of a group of T tokens, filled in
    batch-priority order; a token all of whose choices were dropped outputs 0 (the block's
    residual carries it). ``capacity_factor=None`` (or ``"dropless"``, the spelling that survives
    ``timm.create_model``, which drops None kwargs) is dropless.

    In training the group is the whole batch (the authors' rule). In evaluation ``eval_capacity``
    decides: "per_image" (default) applies the same rule to each image's tokens on their own, so
    an image's prediction never depends on the rest of its evaluation batch (it is exactly the
    authors' evaluation at batch size 1); "batch" is the authors' code as it ran (predictions move
    with ``--eval_batch_size``); "dropless" drops nothing.

    After each forward, ``aux_loss`` holds this layer's balancing loss and ``last_routing`` the
    routing decisions. A training forward with autograd on also queues its aux loss; a training
    step takes the queue of every layer with ``pop_aux_losses`` and adds it to the loss it
    backpropagates, so a step that runs the network several times counts each forward once.
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int = 6, top_k: int = 1,
                 router: str = "cosine", capacity_factor: float | str | None = 1.5, gate_noise: float = 1.0,
                 expert_dropout: float = 0.0, act_layer: Callable[[], nn.Module] = nn.GELU,
                 router_dim: int = 256, bias: bool = True, aux_loss: str = "importance_load",
                 eval_capacity: str = "per_image", experts_implementation: str = "auto"):
        super().__init__()
        config = MoEConfig(num_experts=num_experts, top_k=top_k, router=router, router_dim=router_dim,
                           capacity_factor=capacity_factor, eval_capacity=eval_capacity,
                           gate_noise=gate_noise, expert_dropout=expert_dropout, aux_loss=aux_loss)  # validates
        self.dim, self.hidden_dim = dim, hidden_dim
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor, self.gate_noise, self.aux_loss_type = config.capacity_factor, gate_noise, aux_loss
        self.eval_capacity = eval_capacity
        self.router = build_router(router, dim, num_experts, router_dim)
        self.experts = BatchedExperts(num_experts, dim, hidden_dim, act_layer=act_layer,
                                      dropout=expert_dropout, bias=bias, implementation=experts_implementation)
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.pending_aux_losses: list[torch.Tensor] = []
        self.last_routing: RoutingRecord | None = None

    @property
    def noise_std(self) -> float:
        """Gate noise std, gate_noise / E, only while training."""
        return self.gate_noise / self.num_experts if self.training else 0.0

    @classmethod
    def from_mlp(cls, mlp: nn.Module, num_experts: int = 6, top_k: int = 1, **kwargs) -> "SparseMoE":
        """Upcycle a timm ``Mlp`` (fc1, act, drop1, fc2): every expert starts as a copy of it.

        The router starts random, so at first the layer computes gate x dense FFN output.
        """
        for name in ("fc1", "act", "fc2"):
            if not hasattr(mlp, name):
                raise ValueError(f"cannot upcycle {type(mlp).__name__}: it has no '{name}' (expected a timm Mlp)")
        if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            raise ValueError("cannot upcycle an Mlp with a hidden norm layer (norm_layer must be None)")
        fc1, fc2 = mlp.fc1, mlp.fc2
        drop = getattr(mlp, "drop1", None)
        kwargs.setdefault("expert_dropout", drop.p if isinstance(drop, nn.Dropout) else 0.0)
        kwargs.setdefault("bias", fc1.bias is not None)
        act = mlp.act
        moe = cls(fc1.in_features, fc1.out_features, num_experts=num_experts, top_k=top_k,
                  act_layer=lambda: copy.deepcopy(act), **kwargs)
        moe.experts.load_from_linear_pair(fc1, fc2)
        return moe.to(device=fc1.weight.device, dtype=fc1.weight.dtype)

    def capacity(self, num_tokens: int) -> int | None:
        """Slots per expert for a group of ``num_tokens`` tokens (None: dropless)."""
        return expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor)

    def capacity_groups(self, token_shape: tuple[int, ...]) -> int:
        """How many equal groups the tokens' capacity is counted in: one per image in evaluation
        with ``eval_capacity="per_image"`` (inputs [B, N, D]), else one for the whole batch."""
        if not self.training and self.eval_capacity == "per_image" and len(token_shape) >= 2:
            return token_shape[0]
        return 1

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[T, D] -> (clean logits, logits used for routing (noisy in training), probabilities)."""
        clean = self.router(tokens)
        noise_std = self.noise_std
        noisy = clean + noise_std * torch.randn_like(clean) if noise_std > 0 else clean
        return clean, noisy, noisy.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"SparseMoE expects last dimension {self.dim}, got input of shape {tuple(x.shape)}")
        token_shape = tuple(x.shape[:-1])
        tokens = x.reshape(-1, self.dim)
        num_tokens = tokens.shape[0]

        clean, noisy, probs = self.route(tokens)
        expert_index, gates = top_k_gating(probs, self.top_k)
        groups = self.capacity_groups(token_shape)
        dropless = not self.training and self.eval_capacity == "dropless"
        capacity = None if dropless else self.capacity(num_tokens // groups)
        plan = plan_dispatch(expert_index, probs.detach().amax(dim=-1), self.num_experts, capacity, groups)
        expert_out = self.experts(gather_tokens(tokens, plan), plan.expert_ends)
        out = scatter_outputs(expert_out, gates, plan, num_tokens)

        if self.aux_loss_type == "switch":
            self.aux_loss = switch_balance_loss(probs, expert_index)
        else:
            self.aux_loss = importance_load_loss(clean, noisy, self.noise_std, self.top_k)
        if self.training and torch.is_grad_enabled():
            self.pending_aux_losses.append(self.aux_loss)
        self.last_routing = RoutingRecord(expert_index=expert_index.detach(), gates=gates.detach(),
                                          dropped=plan.dropped, num_experts=self.num_experts,
                                          token_shape=token_shape)
        return out.reshape(*token_shape, out.shape[-1])

    def __getstate__(self) -> dict:
        """Drop the autograd graphs of the aux losses so the layer can be deep-copied/pickled."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["aux_loss"] = self.aux_loss.detach()
        state["pending_aux_losses"] = []
        return state

    def extra_repr(self) -> str:
        return (f"top_k={self.top_k}, capacity_factor={self.capacity_factor}, eval_capacity={self.eval_capacity!r}, "
                f"gate_noise={self.gate_noise}, aux_loss={self.aux_loss_type!r}")


def moe_layers(module: nn.Module) -> dict[str, SparseMoE]:
    """Every SparseMoE inside ``module``, by qualified name."""
    return {name: m for name, m in module.named_modules() if isinstance(m, SparseMoE)}


def collect_aux_loss(module: nn.Module) -> torch.Tensor:
    """Sum of the last forward's aux losses of every SparseMoE in ``module`` (0 if none).

    For a single forward (benchmarks, analyses); training steps use ``pop_aux_losses``."""
    losses = [m.aux_loss for m in moe_layers(module).values()]
    if not losses:
        param = next(module.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return torch.stack([loss.float() for loss in losses]).sum()


def pop_aux_losses(module: nn.Module) -> dict[str, list[torch.Tensor]]:
    """The aux losses queued by the training forwards of each SparseMoE in ``module`` since the last
    pop (one per forward, by layer name; layers that ran none are left out), and empty the queues."""
    losses = {}
    for name, layer in moe_layers(module).items():
        if layer.pending_aux_losses:
            losses[name] = [loss.float() for loss in layer.pending_aux_losses]
            layer.pending_aux_losses = []
    return losses
