"""Spectral Decoupling (Pezeshki et al., NeurIPS 2021, "Gradient Starvation"), Equation 25.

Cross-entropy plus an L2 penalty on the logits. Without it, cross-entropy keeps growing the margin
of the features learnt first, which starves the gradient of every other predictive feature; the
penalty decouples the features' dynamics so that more of them are learnt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .erm import ERM


def logit_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Spectral decoupling's penalty: the mean squared logit."""
    return (logits ** 2).mean()


class SD(ERM):
    """ERM on the concatenated domain batches + ``sd_reg`` x the mean squared logit."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("sd_reg", 0.1, lambda r: float(10 ** r.uniform(-5, -1)), low=0.0)

    def update(self, minibatches, unlabeled=None) -> dict:
        logits = self.network(torch.cat([x for x, _ in minibatches]))
        loss = F.cross_entropy(logits, torch.cat([y for _, y in minibatches]))
        penalty = logit_penalty(logits)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.hparams["sd_reg"] * penalty + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "penalty": penalty.detach()}
