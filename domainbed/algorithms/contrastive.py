"""Contrastive regularizers of the representation: SelfReg (Kim et al., ICCV 2021, "SelfReg:
Self-supervised Contrastive Regularization for Domain Generalization") and the contrastive
adversarial domain bottlenecks CAD / CondCAD (Ruan et al., ICLR 2022, "Optimal Representations
for Covariate Shift").

- **SelfReg** pulls together the logits and (projected) features of examples of the same class,
  whatever their domain, with no negatives: each example is compared with a random same-class
  partner and with a mixup of two such partners.
- **CAD** makes the domain unpredictable from the representation: in a supervised-contrastive
  softmax over the other examples of the batch, it maximizes the probability of picking an example
  of another domain (``is_flipped``, the default) or minimizes that of picking one of the same
  domain. **CondCAD** does so among the examples of the same class only (I(D; Z | Y) instead of
  I(D; Z)).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import RunInfo
from .erm import ERM

# SelfReg's fixed constants (DomainBed's and the paper's; not hparams there either)
SELFREG_MIXUP_ALPHA = 0.5     # Beta(0.5, 0.5) weight of the two partners in the mixup term
SELFREG_FEATURE_WEIGHT = 0.3  # feature terms relative to logit terms

# CAD's base temperature: the loss is scaled by temperature / BASE_TEMPERATURE (as in SupCon)
BASE_TEMPERATURE = 0.07


def same_class_partners(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random partners for every example: ``first[i]`` and ``second[i]`` index examples of the
    class of ``y[i]`` (each a random permutation within every class, possibly ``i`` itself). The
    two permutations are drawn class by class, smallest label first, as in DomainBed."""
    order = torch.argsort(y, stable=True)
    class_sizes = torch.unique_consecutive(y[order], return_counts=True)[1].tolist()
    shuffles: tuple[list, list] = ([], [])
    start = 0
    for size in class_sizes:
        for shuffle in shuffles:
            shuffle.append(torch.randperm(size) + start)
        start += size
    partners = []
    for shuffle in shuffles:
        sorted_partner = order[torch.cat(shuffle).to(y.device)]  # partner of the example at each sorted position
        partner = torch.empty_like(order)
        partner[order] = sorted_partner
        partners.append(partner)
    return partners[0], partners[1]


def selfreg_regularizer(logits: torch.Tensor, features: torch.Tensor, projections: torch.Tensor,
                        first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """SelfReg's regularizer: ``lam`` x the individual term (each example against its first partner)
    + ``(1 - lam)`` x the heterogeneous term (against the ``lam``-mixup of both partners), each the
    mean squared error of the logits + ``SELFREG_FEATURE_WEIGHT`` x that of the features against
    the partners' projected features."""
    mixed_logits = lam * logits[first] + (1 - lam) * logits[second]
    mixed_projections = lam * projections[first] + (1 - lam) * projections[second]
    individual = (F.mse_loss(logits, logits[first])
                  + SELFREG_FEATURE_WEIGHT * F.mse_loss(features, projections[first]))
    heterogeneous = (F.mse_loss(logits, mixed_logits)
                     + SELFREG_FEATURE_WEIGHT * F.mse_loss(features, mixed_projections))
    return lam * individual + (1 - lam) * heterogeneous


class SelfReg(ERM):
    """ERM + SelfReg's regularizer, weighted by ``min(cross-entropy, 1)`` (a constant per step).

    The class-specific domain perturbation layer ``cdpl`` (an MLP with BatchNorm) maps features to
    the partners' side of the feature term. Unlike DomainBed's code, it is trained with the rest:
    DomainBed leaves it out of the optimizer, a known bug (DomainBed issue #62) that the authors'
    own code does not have. Works on any backbone; the batch needs two or more examples
    (BatchNorm).
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        width = self.featurizer.num_features
        hidden = width if width == 2048 else 2 * width
        self.cdpl = nn.Sequential(
            nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, width), nn.BatchNorm1d(width))
        self.optimizer = torch.optim.Adam([*self.network.parameters(), *self.cdpl.parameters()],
                                          lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        lam = float(np.random.beta(SELFREG_MIXUP_ALPHA, SELFREG_MIXUP_ALPHA))
        features = self.featurizer(x)
        projections = self.cdpl(features)
        logits = self.classifier(features)
        first, second = same_class_partners(y)
        classification = F.cross_entropy(logits, y)
        regularizer = selfreg_regularizer(logits, features, projections, first, second, lam)
        loss = classification + classification.detach().clamp(max=1.0) * regularizer
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach()}


def contrastive_bottleneck_loss(z: torch.Tensor, y: torch.Tensor, domains: torch.Tensor, temperature: float,
                                conditional: bool, flipped: bool) -> torch.Tensor:
    """CAD's domain bottleneck loss on representations ``z`` (already projected/normalized).

    For an anchor ``i``, ``p_i(j)`` is the softmax of ``z_i . z_j / temperature`` over the
    candidates ``j != i`` (CondCAD: over those of ``i``'s class only); ``P_i`` is the probability
    mass it puts on another domain (``flipped``) or on ``i``'s own domain (not flipped). The loss
    is the mean over anchors of ``-(temperature / 0.07) log P_i`` (flipped) or
    ``+(temperature / 0.07) log P_i``. Anchors are skipped when that set is empty and, for CAD,
    when no other example shares their class (as in the authors' code); 0 when none is left.
    """
    not_self = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    same_label = (y[:, None] == y[None, :]) & not_self
    same_domain = domains[:, None] == domains[None, :]
    candidates = same_label if conditional else not_self
    targets = candidates & (~same_domain if flipped else same_domain)
    anchors = targets.any(1) & same_label.any(1)  # the second test only ever matters for CAD
    if not anchors.any():
        return z.new_zeros(())
    similarities = (z[anchors] @ z.T) / temperature
    candidates, targets = candidates[anchors], targets[anchors]
    log_mass = (similarities.masked_fill(~targets, float("-inf")).logsumexp(1)
                - similarities.masked_fill(~candidates, float("-inf")).logsumexp(1))
    scale = temperature / BASE_TEMPERATURE
    return (-scale * log_mass if flipped else scale * log_mass).mean()


class AbstractCAD(ERM):
    """ERM + ``lmbda`` x the contrastive domain bottleneck loss on the features (optionally through
    a projection head, ``is_project``, and L2-normalized, ``is_normalized``), one Adam for all.

    Two departures from DomainBed's code, both towards the authors' intent: its projection head
    names an undefined ``feature_dim`` (a NameError when ``is_project``), here the featurizer's
    width as in the authors' code; and in the unconditional, non-flipped loss its same-domain mask
    includes the anchor itself (with similarity replaced by 0), which is no candidate of the
    softmax, so here it is left out. Domains are compared, so two training domains are needed.
    Works on any backbone.
    """

    min_train_domains = 2
    conditional: ClassVar[bool]
    PROJECTION_WIDTH = 128

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("lmbda", 1e-1, lambda r: float(r.choice([1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2])), low=0.0)
        space.add("temperature", 0.1, lambda r: float(r.choice([0.05, 0.1])), low=0.0)
        space.add("is_normalized", False)
        space.add("is_project", False)
        space.add("is_flipped", True)

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        super().check_run(hparams, run)
        if hparams["temperature"] <= 0:
            raise ValueError(f"temperature must be > 0, got {hparams['temperature']}")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        width = self.featurizer.num_features
        self.projection = (nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True),
                                         nn.Linear(width, self.PROJECTION_WIDTH))
                           if hparams["is_project"] else nn.Identity())
        self.optimizer = torch.optim.Adam([*self.network.parameters(), *self.projection.parameters()],
                                          lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def bottleneck_loss(self, features: torch.Tensor, y: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        z = self.projection(features)
        if self.hparams["is_normalized"]:
            z = F.normalize(z, dim=1)
        return contrastive_bottleneck_loss(z, y, domains, self.hparams["temperature"], self.conditional,
                                           self.hparams["is_flipped"])

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        domains = torch.cat([torch.full((len(x),), i, dtype=torch.long, device=x.device)
                             for i, (x, _) in enumerate(minibatches)])
        features = self.featurizer(x)
        bn_loss = self.bottleneck_loss(features, y, domains)
        clf_loss = F.cross_entropy(self.classifier(features), y)
        total_loss = clf_loss + self.hparams["lmbda"] * bn_loss
        self.optimizer.zero_grad(set_to_none=True)
        (total_loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"clf_loss": clf_loss.detach(), "bn_loss": bn_loss.detach(), "total_loss": total_loss.detach()}


class CAD(AbstractCAD):
    """Contrastive adversarial domain bottleneck: minimizes I(D; Z) (needs domain labels)."""

    conditional = False


class CondCAD(AbstractCAD):
    """Conditional CAD: minimizes I(D; Z | Y) (needs domain and class labels)."""

    conditional = True
