"""Empirical risk minimisation: pool the training domains, minimise cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import build_network
from ..moe import collect_aux_loss
from .base import Algorithm


class ERM(Algorithm):
    """Cross-entropy on the concatenated domain minibatches, Adam with L2 weight decay.

    If the backbone has sparse MoE layers, their auxiliary balance losses are added with weight
    ``aux_loss_weight`` (0 when the hparam is absent), so ERM on a GMoE backbone stays well defined.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network = build_network(input_shape, num_classes, hparams)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=hparams["lr"],
                                          weight_decay=hparams["weight_decay"])

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with self.autocast(x):
            logits = self.network(x)
        loss_ce = F.cross_entropy(logits.float(), y)
        weight = self.hparams.get("aux_loss_weight", 0.0)
        if not weight:
            return loss_ce, {"loss": loss_ce.item()}
        loss_aux = collect_aux_loss(self.network)
        loss = loss_ce + weight * loss_aux
        return loss, {"loss": loss.item(), "loss_ce": loss_ce.item(), "loss_aux": loss_aux.item()}

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss, values = self.compute_loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return values

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast(x):
            return self.network(x).float()
