"""Invariance penalties: IRM (Arjovsky et al., 2019) and the information-bottleneck variants IB_ERM
and IB_IRM (Ahuja et al., NeurIPS 2021, "Invariance Principle Meets Information Bottleneck").

All three are ERM on one forward of the concatenated domain batches plus per-domain penalties
averaged over domains:

- **IRM** (IRMv1): the squared gradient of the domain's risk with respect to a dummy scale
  multiplying the logits, at scale 1. A classifier that is simultaneously optimal for every domain
  has zero gradient there. As in DomainBed, the square is estimated without bias as the product
  of the gradients of the two halves of the batch (even and odd examples).
- **IB**: the mean over feature dimensions of the features' (unbiased) variance within the domain,
  which squeezes the representation so that it keeps fewer (spurious) features.

Each penalty has its own schedule: weight ``before`` (1 for IRM, 0 for IB) until its anneal step,
then its ``lambda`` hparam. At each anneal step Adam is replaced by a fresh one, because the jump in
gradient magnitudes would otherwise meet moment estimates tuned to the small penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from .erm import ERM


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1's penalty of one domain: d(risk of even examples)/ds x d(risk of odd examples)/ds for
    the logits scaled by s, at s = 1 (an unbiased estimate of the squared gradient)."""
    scale = torch.ones((), dtype=logits.dtype, device=logits.device, requires_grad=True)
    grad_even, = torch.autograd.grad(F.cross_entropy(logits[::2] * scale, y[::2]), scale, create_graph=True)
    grad_odd, = torch.autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), scale, create_graph=True)
    return grad_even * grad_odd


def feature_variance(features: torch.Tensor) -> torch.Tensor:
    """The information-bottleneck penalty of one domain: the mean per-dimension feature variance."""
    return features.var(dim=0).mean()


@dataclass(frozen=True)
class AnnealedPenalty:
    """A per-domain penalty weighted ``before`` until step ``hparams[anneal_iters]``, then
    ``hparams[weight]``; ``record`` names its value in the step's record."""
    record: str
    weight: str
    anneal_iters: str
    before: float
    per_domain: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (features, logits, y)


IRM_PENALTY = AnnealedPenalty("penalty", "irm_lambda", "irm_penalty_anneal_iters", 1.0,
                              lambda features, logits, y: irm_penalty(logits, y))
IB_PENALTY = AnnealedPenalty("IB_penalty", "ib_lambda", "ib_penalty_anneal_iters", 0.0,
                             lambda features, logits, y: feature_variance(features))


def _irm_hparams(space) -> None:
    space.add("irm_lambda", 1e2, lambda r: float(10 ** r.uniform(-1, 5)), low=0.0)
    space.add("irm_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)), low=0)


def _ib_hparams(space) -> None:
    space.add("ib_lambda", 1e2, lambda r: float(10 ** r.uniform(-1, 5)), low=0.0)
    space.add("ib_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)), low=0)


class _PenalisedERM(ERM):
    """ERM + the subclass's annealed per-domain penalties (see the module docstring)."""

    penalties: ClassVar[tuple[AnnealedPenalty, ...]] = ()

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()

    def update(self, minibatches, unlabeled=None) -> dict:
        step, hp = self.updates, self.hparams
        sizes = [len(x) for x, _ in minibatches]
        features = self.featurizer(torch.cat([x for x, _ in minibatches]))
        logits = self.classifier(features)
        domains = list(zip(features.split(sizes), logits.split(sizes), (y for _, y in minibatches)))
        nll = sum(F.cross_entropy(domain_logits, y) for _, domain_logits, y in domains) / len(domains)
        loss, values = nll, {}
        for penalty in self.penalties:
            value = sum(penalty.per_domain(*domain) for domain in domains) / len(domains)
            loss = loss + (hp[penalty.weight] if step >= hp[penalty.anneal_iters] else penalty.before) * value
            values[penalty.record] = value.detach()
        if any(step == hp[penalty.anneal_iters] for penalty in self.penalties):
            self.optimizer = torch.optim.Adam(self.network.parameters(), lr=hp["lr"],
                                              weight_decay=hp["weight_decay"])
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        self.count_update()
        return {"loss": loss.detach(), "nll": nll.detach(), **values}


class IRM(_PenalisedERM):
    """Invariant Risk Minimization (IRMv1): ERM + ``irm_lambda`` x the IRM penalty after
    ``irm_penalty_anneal_iters`` steps (weight 1 before), Adam reset at that step."""

    penalties = (IRM_PENALTY,)

    @classmethod
    def define_hparams(cls, space) -> None:
        _irm_hparams(space)


class IB_ERM(_PenalisedERM):  # noqa: N801 (DomainBed's name)
    """ERM + ``ib_lambda`` x the feature-variance bottleneck after ``ib_penalty_anneal_iters``
    steps (weight 0 before), Adam reset at that step."""

    penalties = (IB_PENALTY,)

    @classmethod
    def define_hparams(cls, space) -> None:
        _ib_hparams(space)


class IB_IRM(_PenalisedERM):  # noqa: N801 (DomainBed's name)
    """IRM + the feature-variance bottleneck, each on its own schedule; Adam is reset at either
    anneal step."""

    penalties = (replace(IRM_PENALTY, record="IRM_penalty"), IB_PENALTY)

    @classmethod
    def define_hparams(cls, space) -> None:
        _irm_hparams(space)
        _ib_hparams(space)
