"""Transfer (Zhang et al., NeurIPS 2021, "Quantifying and Improving Transferability in Domain
Generalization"), with DomainBed's semantics (its ``update``, the authors' Algorithm 1 loop).

The features are transferable between domains when no classifier close to ours does much better
on one training domain than on another. An adversarial copy of the classifier, kept within
distance ``delta`` of it (Euclidean norm over all its parameters), searches for the largest gap
``max_domain loss - min_domain loss``, and the featurizer learns to shrink that gap besides the task.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbones import build_classifier, build_featurizer
from .base import Algorithm


@torch.no_grad()
def project_to_ball(module: nn.Module, center: nn.Module, radius: float) -> None:
    """Move ``module``'s parameters, in place, to the nearest point of the ball of ``radius`` around
    ``center``'s (one Euclidean norm over all parameters); a module inside the ball is unchanged.
    Computed without a host sync: the move is a lerp towards the center by ``max(0, 1 - radius/distance)``."""
    ours, theirs = list(module.parameters()), list(center.parameters())
    distance = torch.stack([(a - b).pow(2).sum() for a, b in zip(ours, theirs)]).sum().sqrt()
    towards_center = (1 - radius / distance.clamp_min(1e-12)).clamp_min(0)
    for a, b in zip(ours, theirs):
        a.lerp_(b, towards_center)


class Transfer(Algorithm):
    """One step, as DomainBed's ``Transfer.update``:

    1. featurizer + classifier: one optimizer step on the pooled cross-entropy;
    2. featurizer: one step of the same optimizer on ``t_lambda`` x the gap of the adversarial
       classifier left by the previous step (the classifier is not in this loss, so only the
       featurizer moves);
    3. the adversarial classifier restarts from the classifier and takes ``d_steps_per_g`` SGD
       ascent steps (``lr_d``) on the gap, each followed by the projection onto the ball.

    The adversary's steps see detached features: DomainBed backpropagates into the featurizer there
    too, but never applies those gradients. Each domain's loss comes from its own featurizer
    forward, as in DomainBed (BatchNorm backbones see per-domain statistics).

    ``gda`` (gradient descent-ascent: plain SGD for the descent side too) deviates from DomainBed on
    purpose. DomainBed's code gives that SGD the adversarial classifier's parameters instead of the
    featurizer's and classifier's, so with ``gda`` true (which every random hparam draw sets) the
    featurizer and classifier are never updated and the method predicts with its initial network.
    We implement the evident intent: SGD at ``lr``, without weight decay, on the featurizer and
    classifier. ``weight_decay_d`` and ``beta1`` are declared with DomainBed's defaults and draws so
    that records and ``--hparams`` carry DomainBed's keys; like DomainBed's Transfer, this one never
    reads them.
    """

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("t_lambda", 1.0, lambda r: 10 ** r.uniform(-2, 1), low=0.0)
        space.add("delta", 2.0, lambda r: r.uniform(0.1, 3.0), low=0.0)
        space.add("d_steps_per_g", 10, lambda r: int(r.choice([1, 2, 5])), low=1)
        space.add("weight_decay_d", 0.0, lambda r: 10 ** r.uniform(-6, -2), low=0.0)  # unused, as DomainBed's
        space.add("gda", False, lambda r: True)
        space.add("beta1", 0.5, lambda r: float(r.choice([0.0, 0.5])), low=0.0, high=1.0)  # unused, as DomainBed's
        space.add("lr_d", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), low=0.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = build_featurizer(input_shape, hparams)
        nonlinear = hparams.get("nonlinear_classifier", False)
        self.classifier = build_classifier(self.featurizer.num_features, num_classes, nonlinear)
        self.adv_classifier = build_classifier(self.featurizer.num_features, num_classes, nonlinear)
        self.adv_classifier.load_state_dict(self.classifier.state_dict())
        self.network = nn.Sequential(self.featurizer, self.classifier)
        if hparams["gda"]:
            self.optimizer = torch.optim.SGD(self.network.parameters(), lr=hparams["lr"])
        else:
            self.optimizer = torch.optim.Adam(self.network.parameters(), lr=hparams["lr"],
                                              weight_decay=hparams["weight_decay"])
        self.adv_opt = torch.optim.SGD(self.adv_classifier.parameters(), lr=hparams["lr_d"])

    def loss_gap(self, minibatches, detach_features: bool = False) -> torch.Tensor:
        """The adversarial classifier's largest minus smallest per-domain cross-entropy."""
        losses = []
        for x, y in minibatches:
            features = self.featurizer(x)
            losses.append(F.cross_entropy(self.adv_classifier(features.detach() if detach_features else features), y))
        losses = torch.stack(losses)
        return losses.max() - losses.min()

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.network(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()

        gap = self.hparams["t_lambda"] * self.loss_gap(minibatches)
        self.optimizer.zero_grad(set_to_none=True)
        (gap + self.moe_aux_loss()).backward()
        self.optimizer.step()

        self.adv_classifier.load_state_dict(self.classifier.state_dict())
        for _ in range(self.hparams["d_steps_per_g"]):
            gap = self.hparams["t_lambda"] * self.loss_gap(minibatches, detach_features=True)
            self.adv_opt.zero_grad(set_to_none=True)
            (-gap + self.moe_aux_loss()).backward()
            self.adv_opt.step()
            project_to_ball(self.adv_classifier, self.classifier, self.hparams["delta"])
        return {"loss": loss.detach(), "gap": gap.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
