"""Shaping the distribution of risks over training domains: V-REx (Krueger et al., ICML 2021),
EQRM (Eastwood et al., NeurIPS 2022) and RDM (Nguyen et al., WACV 2024).

- **VREx** penalises the variance of the domain risks: equal risks everywhere is what a predictor
  robust to extrapolated domain shifts must have.
- **EQRM** minimises a high quantile of the domain-risk distribution (estimated with a Gaussian KDE
  over the training domains' risks), i.e. it trains for the ``eqrm_quantile`` fraction of domains.
- **RDM** matches the distribution of per-example losses of the worst domain to that of all domains
  (MMD between the two loss samples), plus their variances.

All three are ERM until their anneal (burn-in) step, where Adam is reset because the objective's
gradients change scale there.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distribution_matching import gaussian_kernel
from .erm import ERM

# RDM's kernel bandwidths: one more (1e-4) than MMD's, losses being scalars of small spread
RDM_GAMMAS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def _fresh_adam(network: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
    return torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)


def _per_domain(values: torch.Tensor, minibatches) -> tuple[torch.Tensor, ...]:
    """Rows of ``values`` (computed on the concatenated minibatches) split back per domain."""
    return values.split([len(x) for x, _ in minibatches])


def risk_variance(risks: torch.Tensor) -> torch.Tensor:
    """V-REx's penalty: the (biased) variance of the domain risks."""
    return ((risks - risks.mean()) ** 2).mean()


class VREx(ERM):
    """ERM on the mean domain risk + ``vrex_lambda`` x the variance of the domain risks after
    ``vrex_penalty_anneal_iters`` steps (weight 1 before), Adam reset at that step. Unlike
    DomainBed, whose ``nll`` record is the last domain's risk, ``nll`` records the mean risk."""

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("vrex_lambda", 1e1, lambda r: float(10 ** r.uniform(-1, 5)), low=0.0)
        space.add("vrex_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)), low=0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()

    def update(self, minibatches, unlabeled=None) -> dict:
        step, hp = self.updates, self.hparams
        logits = _per_domain(self.network(torch.cat([x for x, _ in minibatches])), minibatches)
        risks = torch.stack([F.cross_entropy(z, y) for z, (_, y) in zip(logits, minibatches)])
        mean, penalty = risks.mean(), risk_variance(risks)
        weight = hp["vrex_lambda"] if step >= hp["vrex_penalty_anneal_iters"] else 1.0
        loss = mean + weight * penalty
        if step == hp["vrex_penalty_anneal_iters"]:
            self.optimizer = _fresh_adam(self.network, hp["lr"], hp["weight_decay"])
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        self.count_update()
        return {"loss": loss.detach(), "nll": mean.detach(), "penalty": penalty.detach()}


def kde_cdf(x: float, centres: list[float], bandwidth: float) -> float:
    """CDF at ``x`` of the Gaussian KDE with the given centres and bandwidth."""
    return sum(0.5 * (1 + math.erf((x - c) / (bandwidth * math.sqrt(2)))) for c in centres) / len(centres)


def kde_quantile(values: torch.Tensor, alpha: float, bisection_steps: int = 32) -> torch.Tensor:
    """The ``alpha``-quantile of a Gaussian KDE of the 1-D ``values`` (EQRM's nonparametric
    estimate; bandwidth 1.06 x std x n^(-1/5), the Gauss-optimal rule).

    The quantile lies between the ``alpha``-quantiles of the kernels on the smallest and on the
    largest value; bisection on the KDE's CDF (32 halvings, without gradient) finds where, and the
    result is that fixed mix of the two ends. As with DomainBed's estimator, which bisects on
    tensors, its gradient therefore reaches the values through those two ends and the bandwidth.
    """
    bandwidth = 1.06 * values.std() * len(values) ** -0.2
    z = NormalDist().inv_cdf(alpha)
    low, high = values.min() + bandwidth * z, values.max() + bandwidth * z
    lo, hi = low.item(), high.item()
    if not hi > lo:  # all values equal: a point mass
        return low
    centres, h = values.tolist(), bandwidth.item()
    below, above = 0.0, 1.0  # the quantile is between low + below (high - low) and low + above (high - low)
    for _ in range(bisection_steps):
        middle = (below + above) / 2
        if kde_cdf(lo + middle * (hi - lo), centres, h) > alpha:
            above = middle
        else:
            below = middle
    return low + (below + above) / 2 * (high - low)


class EQRM(ERM):
    """Empirical Quantile Risk Minimization: the mean domain risk for ``eqrm_burnin_iters`` steps,
    then the ``eqrm_quantile``-quantile of the domain risks (``kde_quantile``) with a fresh Adam at
    learning rate ``eqrm_lr``. Each domain has its own forward, as in DomainBed.

    ``eqrm_burnin_iters`` is drawn as DomainBed draws it, a float (``10 ** uniform(2.5, 3.5)``), so
    records and burn-in lengths are DomainBed's. DomainBed resets Adam when the step counter equals
    it, which a non-integer never does, so its random sweeps never switch to ``eqrm_lr``; here the
    reset comes at the first quantile step, ``ceil(eqrm_burnin_iters)`` (the same step for an
    integer). DomainBed's estimator also reads q < 0 as log(1 - q), for quantiles very close to 1;
    that is left out, ``eqrm_quantile`` being drawn from [0.5, 0.99].
    """

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("eqrm_quantile", 0.75, lambda r: float(r.uniform(0.5, 0.99)), low=0.001, high=0.999)
        space.add("eqrm_burnin_iters", 2500, lambda r: 10 ** r.uniform(2.5, 3.5), kind=(int, float), low=0)
        space.add("eqrm_lr", 1e-6, lambda r: float(10 ** r.uniform(-7, -5)), low=0.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()

    def update(self, minibatches, unlabeled=None) -> dict:
        step, hp = self.updates, self.hparams
        risks = torch.stack([F.cross_entropy(self.network(x), y) for x, y in minibatches])
        burnin = hp["eqrm_burnin_iters"]
        if step < burnin:
            loss = risks.mean()
        else:
            loss = kde_quantile(risks, hp["eqrm_quantile"])
        if step == math.ceil(burnin):  # the first quantile step (a float burn-in included)
            self.optimizer = _fresh_adam(self.network, hp["eqrm_lr"], hp["weight_decay"])
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        self.count_update()
        return {"loss": loss.detach()}


def rdm_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared MMD between two samples of losses (columns) under RDM's kernel bandwidths."""
    return (gaussian_kernel(x, x, RDM_GAMMAS).mean() + gaussian_kernel(y, y, RDM_GAMMAS).mean()
            - 2 * gaussian_kernel(x, y, RDM_GAMMAS).mean())


def rdm_terms(domain_losses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From each domain's per-example losses: the mean domain risk, the MMD between the worst
    domain's losses and all domains' losses, and var(all losses) + var(the worst domain's)."""
    risks = torch.stack([losses.mean() for losses in domain_losses])
    worst = domain_losses[int(risks.argmax())]
    everyone = torch.cat(domain_losses)
    matching = rdm_mmd(worst[:, None], everyone[:, None])
    return risks.mean(), matching, everyone.var() + worst.var()


class RDM(ERM):
    """Risk Distribution Matching: the mean domain risk + ``rdm_lambda`` x the MMD between the
    worst domain's per-example losses and all of them + ``variance_weight`` x their variances,
    both penalties from ``rdm_penalty_anneal_iters`` on (0 before), with a fresh Adam at learning
    rate ``rdm_lr`` then. Domain batches may differ in size (DomainBed stacks them, so needs equal sizes). The
    record leaves out DomainBed's ``update_count`` and ``rdm_lambda`` (not losses)."""

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        if space.dataset == "DomainNet":
            space.add("rdm_lambda", 0.5, lambda r: float(r.uniform(0.1, 1.0)), low=0.0)
            space.add("rdm_penalty_anneal_iters", 2400, lambda r: int(r.uniform(1500, 3000)), low=0)
        else:
            low_lambda = 1.0 if space.dataset in ("PACS", "TerraIncognita") else 0.1
            space.add("rdm_lambda", 5.0, lambda r: float(r.uniform(low_lambda, 10.0)), low=0.0)
            space.add("rdm_penalty_anneal_iters", 1500, lambda r: int(r.uniform(800, 2700)), low=0)
        if space.dataset in ("TerraIncognita", "OfficeHome", "DomainNet"):
            space.add("variance_weight", 0.0, lambda r: float(r.choice([0.0])), low=0.0)
        else:
            space.add("variance_weight", 0.004, lambda r: float(r.uniform(0.001, 0.007)), low=0.0)
        space.add("rdm_lr", 1.5e-5, lambda r: float(r.uniform(8e-6, 2e-5)), low=0.0)
        if not space.small_images:
            if space.dataset in ("DomainNet", "TerraIncognita"):
                space.add("batch_size", 40, lambda r: int(r.uniform(30, 60)), low=1, replace=True)
            else:
                space.add("batch_size", 88, lambda r: int(r.uniform(70, 100)), low=1, replace=True)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()

    def update(self, minibatches, unlabeled=None) -> dict:
        step, hp = self.updates, self.hparams
        annealed = step >= hp["rdm_penalty_anneal_iters"]
        logits = self.network(torch.cat([x for x, _ in minibatches]))
        losses = F.cross_entropy(logits, torch.cat([y for _, y in minibatches]), reduction="none")
        erm_loss, matching, variance = rdm_terms(list(_per_domain(losses, minibatches)))
        total = (erm_loss + (hp["rdm_lambda"] if annealed else 0.0) * matching
                 + (hp["variance_weight"] if annealed else 0.0) * variance)
        if step == hp["rdm_penalty_anneal_iters"]:
            self.optimizer = _fresh_adam(self.network, hp["rdm_lr"], hp["weight_decay"])
        self.optimizer.zero_grad(set_to_none=True)
        (total + self.moe_aux_loss()).backward()
        self.optimizer.step()
        self.count_update()
        return {"total_loss": total.detach(), "erm_loss": erm_loss.detach(),
                "matching_penalty": matching.detach(), "variance_penalty": variance.detach()}
