"""ERM (Vapnik, 1998): pool the training domains and minimise the cross-entropy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbones import build_classifier, build_featurizer
from .base import Algorithm


class ERM(Algorithm):
    """Cross-entropy on the concatenated domain minibatches, Adam with L2 weight decay.

    Also the base of every method that keeps ERM's networks and optimizer and adds a penalty.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = build_featurizer(input_shape, hparams)
        self.classifier = build_classifier(self.featurizer.num_features, num_classes,
                                           hparams.get("nonlinear_classifier", False))
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=hparams["lr"],
                                          weight_decay=hparams["weight_decay"])

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.network(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
