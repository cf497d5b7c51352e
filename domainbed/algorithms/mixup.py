"""Inter-domain Mixup (Yan et al., 2020, "Improve Unsupervised Domain Adaptation with Mixup
Training"; Wang et al., 2020, "Heterogeneous Domain Generalization via Domain Mixup").

The training domains are put in a random cycle; each domain's minibatch is mixed with the next
one's, ``lam * x_i + (1 - lam) * x_j`` with ``lam ~ Beta(mixup_alpha, mixup_alpha)`` drawn per pair,
and the prediction on the mixture is scored against both label sets with the same weights. The
network thus sees, and must interpolate between, inputs lying between the training domains.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import RunInfo
from .erm import ERM


def random_domain_pairs(minibatches):
    """Pair each domain's ``(x, y)`` with the next one's in a random cyclic order of the domains
    (DomainBed's ``random_pairs_of_minibatches``), both cut to the shorter batch's length."""
    order = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for position, i in enumerate(order):
        j = order[(position + 1) % len(order)]
        (xi, yi), (xj, yj) = minibatches[i], minibatches[j]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


class Mixup(ERM):
    """ERM on mixtures of pairs of training domains. Needs two domains: with one, every example
    would be mixed with itself (plain ERM). Works on any backbone."""

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("mixup_alpha", 0.2, lambda r: 10 ** r.uniform(-1, 1), low=0.0)

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        super().check_run(hparams, run)
        if hparams["mixup_alpha"] <= 0:
            raise ValueError(f"mixup_alpha must be > 0 (a Beta distribution's parameter), got {hparams['mixup_alpha']}")

    def update(self, minibatches, unlabeled=None) -> dict:
        alpha = self.hparams["mixup_alpha"]
        objective = 0.0
        for (xi, yi), (xj, yj) in random_domain_pairs(minibatches):
            lam = float(np.random.beta(alpha, alpha))
            logits = self.network(lam * xi + (1 - lam) * xj)
            objective = objective + lam * F.cross_entropy(logits, yi) + (1 - lam) * F.cross_entropy(logits, yj)
        objective = objective / len(minibatches)
        self.optimizer.zero_grad(set_to_none=True)
        (objective + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": objective.detach()}
