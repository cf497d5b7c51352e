"""ARM (Zhang et al., NeurIPS 2021, "Adaptive Risk Minimization"), DomainBed's contextual variant
(ARM-CML).

A small convolutional context network summarises a *support set* of unlabeled images of one
domain: its one-channel output map, averaged over the support set, is appended to every image of
the set as an extra input channel, so the prediction adapts to the domain it is made on. Training
treats each training domain's minibatch as one support set; prediction groups a batch into
support sets of ``batch_size`` images (the whole batch when that does not divide it).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbones import build_classifier, build_featurizer
from .base import Algorithm


class ContextNet(nn.Module):
    """Three 5x5 convolutions (64, 64, 1 channels) that keep the image size: one context value
    per pixel."""

    def __init__(self, in_channels: int, width: int = 64, kernel_size: int = 5):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size, padding=padding), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, kernel_size, padding=padding), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 1, kernel_size, padding=padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ARM(Algorithm):
    """ERM on images with an extra channel: the support-set mean of the context network's map.

    The featurizer is built for ``in_chans + 1`` channels (timm adapts the stem of any backbone,
    ViT and GMoE included), so ``featurizer`` and ``network`` take the augmented images.

    Deviation from DomainBed: DomainBed builds ERM's optimizer before the context network, so its
    context network is never trained (it stays at its random initialisation; only its BatchNorm
    statistics move). ARM trains it jointly with the predictor (the paper's meta-training and the
    authors' code, henrikmarklund/arm, which optimise both), so here one Adam optimises both.
    """

    @classmethod
    def define_hparams(cls, space) -> None:
        # DomainBed's special case: support sets of 8 on the large-image datasets
        if not space.small_images:
            space.add("batch_size", 8, lambda r: 8, replace=True, low=1)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        channels, *size = input_shape
        self.context_net = ContextNet(channels)
        self.featurizer = build_featurizer((channels + 1, *size), hparams)
        self.classifier = build_classifier(self.featurizer.num_features, num_classes,
                                           hparams.get("nonlinear_classifier", False))
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = torch.optim.Adam([*self.network.parameters(), *self.context_net.parameters()],
                                          lr=hparams["lr"], weight_decay=hparams["weight_decay"])
        self.support_size = hparams["batch_size"]

    def with_context(self, x: torch.Tensor, support_sizes: list[int]) -> torch.Tensor:
        """``x`` with the context channel appended; consecutive runs of ``support_sizes`` images are
        the support sets. One context-network forward on the whole batch (as DomainBed)."""
        context = self.context_net(x)
        means = [chunk.mean(dim=0, keepdim=True).expand_as(chunk)
                 for chunk in torch.split(context, support_sizes)]
        return torch.cat([x, torch.cat(means)], dim=1)

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        logits = self.network(self.with_context(x, [len(x) for x, _ in minibatches]))
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        support_size = self.support_size if len(x) % self.support_size == 0 else len(x)
        return self.network(self.with_context(x, [support_size] * (len(x) // support_size)))
