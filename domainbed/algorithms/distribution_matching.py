"""Matching feature distributions across training domains: MMD and CORAL (Sun & Saenko, 2016;
Li et al., 2018) and their causal variants CausIRL-MMD / CausIRL-CORAL (Chevalley et al., 2022).

All four are ERM plus ``mmd_gamma`` x a distance between feature batches: a sum of Gaussian
kernels at seven bandwidths (MMD) or the squared differences of means and covariances (CORAL).
MMD/CORAL average the distance over every pair of training domains; CausIRL compares the two
halves of the batch cut at a random point in each domain (the interventional split of the paper).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .erm import ERM

GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ||x_i - y_j||^2, floored at 1e-30 (as DomainBed)."""
    return (x.pow(2).sum(-1, keepdim=True) - 2 * x @ y.T + y.pow(2).sum(-1)).clamp_min(1e-30)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, gammas=GAMMAS) -> torch.Tensor:
    distances = squared_distances(x, y)
    return sum(torch.exp(-gamma * distances) for gamma in gammas)


def mmd_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (biased) squared MMD between two feature batches under the multi-bandwidth kernel."""
    return gaussian_kernel(x, x).mean() + gaussian_kernel(y, y).mean() - 2 * gaussian_kernel(x, y).mean()


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the means plus of the (unbiased) covariance matrices."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    centred_x, centred_y = x - mean_x, y - mean_y
    cov_x = centred_x.T @ centred_x / (len(x) - 1)
    cov_y = centred_y.T @ centred_y / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cov_x - cov_y).pow(2).mean()


class AbstractMMD(ERM):
    """ERM + ``mmd_gamma`` x the mean distance between the features of every pair of domains."""

    min_train_domains = 2
    distance = staticmethod(mmd_distance)

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("mmd_gamma", 1.0, lambda r: 10 ** r.uniform(-1, 1), low=0.0)

    def penalty(self, features: list[torch.Tensor]) -> torch.Tensor | float:
        n = len(features)
        total = sum(self.distance(features[i], features[j]) for i in range(n) for j in range(i + 1, n))
        return total / (n * (n - 1) / 2) if n > 1 else 0.0

    def update(self, minibatches, unlabeled=None) -> dict:
        features = [self.featurizer(x) for x, _ in minibatches]
        objective = sum(F.cross_entropy(self.classifier(f), y) for f, (_, y) in zip(features, minibatches))
        objective = objective / len(minibatches)
        penalty = self.penalty(features)
        self.optimizer.zero_grad(set_to_none=True)
        (objective + self.hparams["mmd_gamma"] * penalty + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": objective.detach(), "penalty": penalty.detach() if torch.is_tensor(penalty) else penalty}


class MMD(AbstractMMD):
    """Feature distributions matched with a Gaussian-kernel MMD."""

    distance = staticmethod(mmd_distance)


class CORAL(AbstractMMD):
    """Feature distributions matched in mean and covariance (Deep CORAL)."""

    distance = staticmethod(coral_distance)


class AbstractCausIRL(AbstractMMD):
    """Match the features of the two halves of a random cut of each domain's batch, pooled over
    domains (the cut point is drawn with NumPy's global RNG, as DomainBed's)."""

    min_train_domains = 1

    def penalty(self, features: list[torch.Tensor]) -> torch.Tensor | float:
        cuts = [np.random.randint(0, len(f)) for f in features]
        first = torch.cat([f[:cut] for f, cut in zip(features, cuts)])
        second = torch.cat([f[cut:] for f, cut in zip(features, cuts)])
        if len(first) > 1 and len(second) > 1:
            return torch.nan_to_num(self.distance(first, second))
        return 0.0


class CausIRL_MMD(AbstractCausIRL):  # noqa: N801 (DomainBed's name)
    distance = staticmethod(mmd_distance)


class CausIRL_CORAL(AbstractCausIRL):  # noqa: N801 (DomainBed's name)
    distance = staticmethod(coral_distance)
