"""Fishr (Rame et al., ICML 2022, "Fishr: Invariant Gradient Variances for Out-of-Distribution
Generalization").

ERM plus ``lambda`` x the distance between the training domains' variances of per-sample
gradients, taken for the classifier's parameters only (a cheap stand-in for the whole network's,
as in the paper). The per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` through
``functional_call``) instead of DomainBed's BackPACK; they stay differentiable, so the penalty
trains the featurizer and the classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .erm import ERM


def per_sample_gradients(classifier: nn.Module, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of each sample's cross-entropy with respect to the classifier's parameters,
    flattened: shape (samples, parameters), differentiable in ``features`` and the parameters."""
    params = dict(classifier.named_parameters())

    def sample_loss(params, z, label):
        logits = functional_call(classifier, params, (z.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    gradients = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, features, y)
    return torch.cat([g.flatten(1) for g in gradients.values()], dim=1)


class Fishr(ERM):
    """Cross-entropy on all domains + ``lambda`` x the mean over domains of the mean squared
    difference between the domain's gradient variance and the mean over domains.

    Each domain's variance is smoothed by an exponential moving average (``ema``; the buffer
    ``grad_variance_ema``, one row per training domain, in minibatch order), divided by
    ``1 - ema`` so that the current batch enters with weight 1. The penalty is off (weight 0) for
    the first ``penalty_anneal_iters`` updates, and Adam restarts when it comes on, as in IRM.
    """

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("lambda", 1000.0, lambda r: float(10 ** r.uniform(1.0, 4.0)), low=0.0)
        space.add("penalty_anneal_iters", 1500, lambda r: int(r.uniform(0.0, 5000.0)), low=0)
        space.add("ema", 0.95, lambda r: float(r.uniform(0.90, 0.99)), low=0.0, high=1.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()
        num_params = sum(p.numel() for p in self.classifier.parameters())
        self.register_buffer("grad_variance_ema", torch.zeros(num_domains, num_params))

    def penalty(self, features: torch.Tensor, y: torch.Tensor, domain_sizes: list[int]) -> torch.Tensor:
        """Update the moving averages with this batch and return the distance between domains."""
        gradients = per_sample_gradients(self.classifier, features, y).split(domain_sizes)
        variances = torch.stack([g.var(0, unbiased=False) for g in gradients])
        ema = self.hparams["ema"]
        averaged = ema * self.grad_variance_ema + (1 - ema) * variances
        self.grad_variance_ema.copy_(averaged.detach())
        averaged = averaged / (1 - ema)
        return (averaged - averaged.mean(0)).pow(2).mean()

    def update(self, minibatches, unlabeled=None) -> dict:
        if len(minibatches) != self.num_domains:
            raise ValueError(f"Fishr keeps one gradient variance per training domain: expected "
                             f"{self.num_domains} minibatches, got {len(minibatches)}")
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        features = self.featurizer(x)
        logits = self.classifier(features)
        nll = F.cross_entropy(logits, y)
        penalty = self.penalty(features, y, [len(x) for x, _ in minibatches])

        penalty_weight = 0.0
        if self.updates >= self.hparams["penalty_anneal_iters"]:
            penalty_weight = self.hparams["lambda"]
            if self.updates == self.hparams["penalty_anneal_iters"] != 0:
                # Adam's moments do not suit the sudden jump in gradient magnitude
                self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.hparams["lr"],
                                                  weight_decay=self.hparams["weight_decay"])
        self.count_update()

        objective = nll + penalty_weight * penalty
        self.optimizer.zero_grad(set_to_none=True)
        (objective + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": objective.detach(), "nll": nll.detach(), "penalty": penalty.detach()}
