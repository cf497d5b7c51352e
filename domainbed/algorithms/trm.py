"""TRM (Xu & Jaakkola, 2021, "Learning Representations that Support Robust Transfer of Predictors").

A representation supports transfer if a classifier fitted on one domain's features also does well
on the others. After ``iters`` ERM updates, each step fits one linear classifier per training
domain on the current (detached) features, then adds to ERM's loss, for every domain Q, the
loss of Q's classifier on the other domains (weighted by GroupDRO-style weights ``alpha``) minus
``cos_lambda`` x the alignment between the gradients of that transfer loss and of Q's own loss,
the former preconditioned by an approximate inverse Hessian of Q's loss (a Neumann series).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import RunInfo
from .erm import ERM

NEUMANN_STEPS = 10         # terms of the inverse-Hessian series
NEUMANN_BOUND = 10.0       # the series stops once an entry exceeds this (it is diverging)
DOMAIN_CLASSIFIER_STEPS = 30
DOMAIN_CLASSIFIER_LR = 0.1


def hessian_vector_product(loss_fn, weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v for H the Hessian of ``loss_fn()`` with respect to ``weight`` (v flattened)."""
    gradient, = torch.autograd.grad(loss_fn(), weight, create_graph=True)
    hv, = torch.autograd.grad(gradient.flatten() @ v, weight)
    return hv.flatten()


def inverse_hessian_vector_product(classifier: nn.Linear, features: torch.Tensor, y: torch.Tensor,
                                   v: torch.Tensor) -> torch.Tensor:
    """An approximation of ``H^-1 v``, H the Hessian of the classifier's cross-entropy on
    ``(features, y)`` with respect to its weight, by the Neumann series ``sum_k (I - H)^k v``.

    As DomainBed's reference computes it (its first term is updated in place after being summed),
    the series starts with ``(I - H) v`` counted twice instead of ``v`` once:
    ``2 (I - H) v + (I - H)^2 v + ... + (I - H)^10 v``, stopping early once an entry exceeds 10.
    """
    def loss():
        return F.cross_entropy(classifier(features), y)

    term = v.detach()
    estimate = None
    for _ in range(NEUMANN_STEPS):
        term = term - hessian_vector_product(loss, classifier.weight, term)
        estimate = 2 * term if estimate is None else estimate + term
        if estimate.abs().max() > NEUMANN_BOUND:
            break
    return estimate


class TRM(ERM):
    """ERM, then ERM + the transfer loss of the module docstring from update ``iters`` on.

    The domain classifiers, one per training domain, are linear and trained by their own SGD
    (lr 0.1, 30 steps per update on detached features); the network keeps ERM's Adam (DomainBed's
    two Adams, one for the featurizer and one for the classifier, take the same steps). Only a
    linear classifier is supported (``nonlinear_classifier`` must be false), as in DomainBed.
    """

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("cos_lambda", 1e-4, lambda r: float(10 ** r.uniform(-5, 0)), low=0.0)
        space.add("iters", 200, lambda r: int(10 ** r.uniform(0, 4)), low=0)
        space.add("groupdro_eta", 1e-2, lambda r: float(10 ** r.uniform(-3, -1)), low=0.0)

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        super().check_run(hparams, run)
        if hparams["nonlinear_classifier"]:
            raise ValueError("TRM supports only a linear classifier; set nonlinear_classifier to false")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()
        num_features = self.featurizer.num_features
        self.domain_classifiers = nn.ModuleList(nn.Linear(num_features, num_classes) for _ in range(num_domains))
        self.domain_optimizer = torch.optim.SGD(self.domain_classifiers.parameters(), lr=DOMAIN_CLASSIFIER_LR)
        # alpha[Q, i]: the weight of domain i in the transfer loss of domain Q's classifier
        self.register_buffer("alpha", torch.ones(num_domains, num_domains) - torch.eye(num_domains))

    def fit_domain_classifiers(self, features: list[torch.Tensor], labels: list[torch.Tensor]) -> None:
        """SGD on the sum of each domain classifier's cross-entropy on its domain's features."""
        for _ in range(DOMAIN_CLASSIFIER_STEPS):
            loss = sum(F.cross_entropy(classifier(f.detach()), y)
                       for classifier, f, y in zip(self.domain_classifiers, features, labels))
            self.domain_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.domain_optimizer.step()

    def transfer_loss(self, features: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
        """The mean over domains Q of Q's classifier's alpha-weighted loss on the other domains minus
        ``cos_lambda`` x the preconditioned alignment of its gradient with that of Q's own loss;
        updates ``alpha`` GroupDRO-style (from the weighted losses, as DomainBed)."""
        total = 0.0
        for q, classifier in enumerate(self.domain_classifiers):
            own_loss = F.cross_entropy(classifier(features[q]), labels[q])
            own_gradient, = torch.autograd.grad(own_loss, classifier.weight, create_graph=True)
            others = [i for i in range(len(features)) if i != q]
            weights = self.alpha[q].clone()  # alpha changes below, before the backward
            weighted = {i: F.cross_entropy(classifier(features[i]), labels[i]) * weights[i] for i in others}
            transfer = sum(weighted.values())
            transfer_gradient, = torch.autograd.grad(transfer, classifier.weight, retain_graph=True)
            preconditioned = inverse_hessian_vector_product(classifier, features[q].detach(), labels[q],
                                                            transfer_gradient.flatten())
            total = total + transfer - self.hparams["cos_lambda"] * (preconditioned @ own_gradient.flatten())
            for i in others:
                self.alpha[q, i] *= torch.exp(self.hparams["groupdro_eta"] * weighted[i].detach())
        return total / len(features)

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        transferring = self.updates >= self.hparams["iters"]
        if transferring:
            if self.hparams["class_balanced"]:  # start every domain classifier from the shared weights
                with torch.no_grad():
                    for classifier in self.domain_classifiers:
                        classifier.weight.copy_(self.classifier.weight)
            self.alpha /= self.alpha.sum(1, keepdim=True)
        features = self.featurizer(x)
        nll = F.cross_entropy(self.classifier(features), y)
        trm_loss = nll.new_zeros(())
        if transferring:
            domain_features = list(features.split([len(x) for x, _ in minibatches]))
            labels = [y for _, y in minibatches]
            self.fit_domain_classifiers(domain_features, labels)
            trm_loss = self.transfer_loss(domain_features, labels)

        self.optimizer.zero_grad(set_to_none=True)
        (nll + trm_loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        self.count_update()
        return {"nll": nll.detach(), "trm_loss": trm_loss.detach()}
