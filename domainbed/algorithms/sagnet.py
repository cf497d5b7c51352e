"""SagNet (Nam et al., CVPR 2021, "Reducing Domain Gap by Reducing Style Bias"), DomainBed's variant.

A feature vector is split into "style" (its mean and variance over the feature dimension) and
"content" (the standardized vector). The content classifier learns on features whose style was
mixed with another example's, so it cannot rely on style; a style classifier learns on features
whose content was swapped with another example's; and the featurizer is trained adversarially to
make the style classifier's predictions uniform, removing class information from the style.

This is DomainBed's version: the statistics are those of the featurizer's pooled output, so it runs
on any backbone (ViT, GMoE, ResNet). The paper's version, which randomizes the per-channel spatial
statistics of a ResNet's layer3 maps and gives the content and style networks their own layer4,
is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbones import build_classifier, build_featurizer
from .base import Algorithm

EPS = 1e-5


def _standardize(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(content, mean, var): each row's standardized values and its statistics (unbiased var)."""
    mean = features.mean(-1, keepdim=True)
    var = features.var(-1, keepdim=True)
    return (features - mean) / (var + EPS).sqrt(), mean, var


def randomize_style(features: torch.Tensor) -> torch.Tensor:
    """Keep each row's content; give it a random mix ``alpha * own + (1 - alpha) * other`` of its
    own and another row's mean and variance (``alpha ~ U(0, 1)`` per row, other rows by a random
    permutation)."""
    content, mean, var = _standardize(features)
    alpha = torch.rand(len(features), 1, device=features.device)
    other = torch.randperm(len(features), device=features.device)
    mean = alpha * mean + (1 - alpha) * mean[other]
    var = alpha * var + (1 - alpha) * var[other]
    return content * (var + EPS).sqrt() + mean


def randomize_content(features: torch.Tensor) -> torch.Tensor:
    """Keep each row's mean and variance; give it another row's content (a random permutation),
    detached, so that gradients reach the features only through the style statistics."""
    content, mean, var = _standardize(features)
    other = torch.randperm(len(features), device=features.device)
    return content[other].detach() * (var + EPS).sqrt() + mean


class SagNet(Algorithm):
    """Style-agnostic network: featurizer, content ``classifier`` and ``style_classifier``, each with
    its own Adam. One step: (1) featurizer + content classifier on style-randomized features,
    (2) style classifier on content-randomized features, (3) featurizer against the style
    classifier (``sag_w_adv`` x the cross-entropy to the uniform distribution). Step (2)'s features
    are computed without a graph: DomainBed backpropagates into the featurizer there too, but those
    gradients are cleared before step (3) and never applied."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("sag_w_adv", 0.1, lambda r: 10 ** r.uniform(-2, 1), low=0.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        nonlinear = hparams.get("nonlinear_classifier", False)
        self.featurizer = build_featurizer(input_shape, hparams)
        self.classifier = build_classifier(self.featurizer.num_features, num_classes, nonlinear)
        self.style_classifier = build_classifier(self.featurizer.num_features, num_classes, nonlinear)
        self.network = nn.Sequential(self.featurizer, self.classifier)

        def adam(module):
            return torch.optim.Adam(module.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

        self.optimizer_f = adam(self.featurizer)
        self.optimizer_c = adam(self.classifier)
        self.optimizer_s = adam(self.style_classifier)

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])

        # (1) content: the class from features whose style is randomized
        loss_c = F.cross_entropy(self.classifier(randomize_style(self.featurizer(x))), y)
        self.optimizer_f.zero_grad(set_to_none=True)
        self.optimizer_c.zero_grad(set_to_none=True)
        (loss_c + self.moe_aux_loss()).backward()
        self.optimizer_f.step()
        self.optimizer_c.step()

        # (2) style: the class from features whose content is randomized (style classifier only)
        with torch.no_grad():
            features = self.featurizer(x)
        loss_s = F.cross_entropy(self.style_classifier(randomize_content(features)), y)
        self.optimizer_s.zero_grad(set_to_none=True)
        loss_s.backward()
        self.optimizer_s.step()

        # (3) adversary: the featurizer makes the style classifier's predictions uniform
        log_probs = F.log_softmax(self.style_classifier(randomize_content(self.featurizer(x))), dim=1)
        loss_adv = -self.hparams["sag_w_adv"] * log_probs.mean()
        self.optimizer_f.zero_grad(set_to_none=True)
        (loss_adv + self.moe_aux_loss()).backward()
        self.optimizer_f.step()

        return {"loss_c": loss_c.detach(), "loss_s": loss_s.detach(), "loss_adv": loss_adv.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
