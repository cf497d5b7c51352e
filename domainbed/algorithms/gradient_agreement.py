"""Training on what the domains' gradients agree on: AND-mask (Parascandolo et al., ICLR 2021,
"Learning explanations that are hard to vary"), SAND-mask (Shahtalebi et al., 2021) and IGA
(Koyama & Yamaguchi, 2020, arXiv:2008.01883).

Each training domain gets its own forward and loss, and the gradients of those losses are
combined: AND-mask keeps the components whose sign most domains share, SAND-mask weighs them by
a smooth agreement score, IGA penalises their variance across domains. On a GMoE backbone a
domain's loss includes the balance loss of that domain's forward, so the routers' balance
gradient is combined like any other (masked where the domains disagree, part of IGA's variance);
averaging over domains keeps its weight what it is for ERM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .erm import ERM


def and_mask(gradients: torch.Tensor, tau: float) -> torch.Tensor:
    """1 where the domains' gradient signs agree at least ``tau`` (``|mean sign| >= tau``), else 0;
    ``gradients`` stacks one gradient per domain along dim 0."""
    return (gradients.sign().mean(0).abs() >= tau).to(gradients.dtype)


def sand_mask(gradients: torch.Tensor, tau: float, k: float) -> torch.Tensor:
    """SAND-mask's smooth agreement ``max(0, tanh(k (|mean sign| - tau) / variance))``: close to 1
    where the signs agree beyond ``tau`` and the magnitudes vary little across domains (unbiased
    variance, as DomainBed). Where the domains' gradients are equal (variance 0) and the agreement
    is exactly ``tau`` the score is 0/0; DomainBed sets those components to 1e-17, and so do we."""
    agreement = gradients.sign().mean(0).abs()
    mask = torch.tanh(k * ((agreement - tau) / gradients.var(0))).clamp_min(0.0)
    return torch.nan_to_num(mask, nan=1e-17)


def masked_mean_gradient(gradients: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The domains' mean gradient where ``mask`` lets it through, divided by the mask's mean so that
    the step does not shrink with the share of masked components."""
    return mask * gradients.mean(0) / (1e-10 + mask.mean())


def gradient_variance_penalty(domain_gradients: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """IGA's penalty: sum over domains and parameters of ``||g_domain - g_mean||^2``.

    The mean is detached: its own gradient terms sum to zero over the domains, so the penalty's
    gradient is the same and the step needs no backward through the mean."""
    means = [torch.stack(per_domain).mean(0).detach() for per_domain in zip(*domain_gradients)]
    return sum((g - mean).pow(2).sum() for gradients in domain_gradients for g, mean in zip(gradients, means))


def _domain_losses_and_gradients(algorithm: ERM, minibatches, create_graph: bool = False):
    """Each domain's cross-entropy and the gradient, with respect to every network parameter, of
    that cross-entropy plus the balance loss of its forward (the records report the first, the
    optimiser follows the second; ``create_graph``: both stay differentiable)."""
    params = list(algorithm.network.parameters())
    losses, objectives, gradients = [], [], []
    for x, y in minibatches:
        loss = F.cross_entropy(algorithm.network(x), y)
        objective = loss + algorithm.moe_aux_loss()
        losses.append(loss)
        objectives.append(objective)
        gradients.append(torch.autograd.grad(objective, params, create_graph=create_graph))
    return losses, objectives, gradients


class ANDMask(ERM):
    """Adam on the mean of the domains' gradients, keeping only the components whose sign is shared
    by at least a fraction ``tau`` of the domains (``|mean sign| >= tau``), rescaled per tensor."""

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("tau", 1.0, lambda r: float(r.uniform(0.5, 1.0)), low=0.0, high=1.0)

    def mask(self, gradients: torch.Tensor) -> torch.Tensor:
        return and_mask(gradients, self.hparams["tau"])

    def update(self, minibatches, unlabeled=None) -> dict:
        losses, _, gradients = _domain_losses_and_gradients(self, minibatches)
        self.optimizer.zero_grad(set_to_none=True)
        for param, per_domain in zip(self.network.parameters(), zip(*gradients)):
            stacked = torch.stack(per_domain)
            param.grad = masked_mean_gradient(stacked, self.mask(stacked))
        self.optimizer.step()
        return {"loss": sum(loss.detach() for loss in losses) / len(losses)}


class SANDMask(ANDMask):
    """AND-mask with a smooth mask: ``tanh`` of the sign agreement above ``tau``, sharpened by ``k``
    and by how little the gradient magnitudes vary across domains.

    The default ``tau`` is 0.5, not DomainBed's 1.0. DomainBed's own mask,
    ``max(0, tanh(k (|mean sign| - tau) / var))``, has an argument <= 0 everywhere when ``tau = 1``
    (``|mean sign| <= 1``), so it is 0 (1e-17 where every domain's gradient is the same): the step is
    zero and a default DomainBed run never trains. 0.5 is the middle of the random-search range; the
    draws and ``k`` are DomainBed's.
    """

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("tau", 0.5, lambda r: float(r.uniform(0.0, 1.0)), low=0.0, high=1.0)
        space.add("k", 10.0, lambda r: float(10 ** r.uniform(-3, 5)), low=0.0)

    def mask(self, gradients: torch.Tensor) -> torch.Tensor:
        return sand_mask(gradients, self.hparams["tau"], self.hparams["k"])


class IGA(ERM):
    """Inter-environmental Gradient Alignment: the mean domain loss plus ``penalty`` x the variance
    of the domains' gradients (the trace of their covariance), minimised by Adam.

    The penalty differentiates gradients, so attention runs on PyTorch's math kernel, the one with
    a double backward (the fused kernels have none); it computes the same attention.
    """

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("penalty", 1000.0, lambda r: float(10 ** r.uniform(1, 5)), low=0.0)

    def update(self, minibatches, unlabeled=None) -> dict:
        with sdpa_kernel(SDPBackend.MATH):
            losses, objectives, gradients = _domain_losses_and_gradients(self, minibatches, create_graph=True)
        mean_loss = torch.stack(losses).mean()
        penalty = gradient_variance_penalty(gradients)
        self.optimizer.zero_grad(set_to_none=True)
        (torch.stack(objectives).mean() + self.hparams["penalty"] * penalty).backward()
        self.optimizer.step()
        return {"loss": mean_loss.detach(), "penalty": penalty.detach()}
