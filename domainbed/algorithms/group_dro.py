"""GroupDRO (Sagawa et al., ICLR 2020, "Distributionally Robust Neural Networks"), Algorithm 1.

Minimises a weighted sum of the domain risks whose weights ``q`` (a distribution over training
domains) follow an exponentiated-gradient ascent on the risks: ``q_d <- q_d exp(eta * risk_d)``,
renormalised every step. ``q`` therefore drifts towards the domains with persistently high risk,
a smooth version of training on the worst domain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .erm import ERM


class GroupDRO(ERM):
    """ERM on ``q . risks``, with ``q`` updated before the step from this step's (detached) risks
    at rate ``groupdro_eta``. Each domain has its own forward, as in DomainBed. ``q`` is a buffer
    of one weight per training domain, uniform at the start (DomainBed starts it at ones on the
    first step, which the first normalisation makes the same)."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("groupdro_eta", 1e-2, lambda r: float(10 ** r.uniform(-3, -1)), low=0.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("q", torch.ones(num_domains))

    def update(self, minibatches, unlabeled=None) -> dict:
        if len(minibatches) != len(self.q):
            raise ValueError(f"GroupDRO keeps a weight for each of its {len(self.q)} training domains, "
                             f"got {len(minibatches)} minibatches")
        risks = torch.stack([F.cross_entropy(self.network(x), y) for x, y in minibatches])
        self.q *= torch.exp(self.hparams["groupdro_eta"] * risks.detach())
        self.q /= self.q.sum()
        loss = torch.dot(risks, self.q)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach()}
