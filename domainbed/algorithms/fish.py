"""Fish (Shi et al., ICLR 2022, "Gradient Matching for Domain Generalization").

One step: copy the network, take one inner Adam step per training domain on the copy (domains in
order), then move the network a fraction ``meta_lr`` towards the copy. To first order this ascends
the inner product of the domains' gradients, i.e. it favours directions all domains agree on. As in
DomainBed's reference, the inner optimizer's state carries over from step to step and the outer
network is moved directly (it has no optimizer of its own to step).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbones import build_network
from .base import Algorithm


class Fish(Algorithm):
    """The recorded ``loss`` is the mean over domains of the inner cross-entropies (each taken by the
    copy just before its step on that domain), not DomainBed's last domain's: a mean does not depend
    on which domain comes last and is on the scale of ERM's pooled loss, so runs of different
    methods compare. A DomainBed Fish log's ``loss`` is therefore not the same quantity."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("meta_lr", 0.5, lambda r: float(r.choice([0.05, 0.1, 0.5])), low=0.0, high=1.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network = build_network(input_shape, num_classes, hparams)
        self.featurizer, self.classifier = self.network[0], self.network[1]
        # the copy that takes the inner steps; its weights are reset from ``network`` every step
        self.network_inner = build_network(input_shape, num_classes, dict(hparams, pretrained=False,
                                                                          pretrained_file=""))
        self.optimizer_inner = torch.optim.Adam(self.network_inner.parameters(), lr=hparams["lr"],
                                                weight_decay=hparams["weight_decay"])

    def update(self, minibatches, unlabeled=None) -> dict:
        _copy_weights(self.network, self.network_inner)
        losses = []
        for x, y in minibatches:
            loss = F.cross_entropy(self.network_inner(x), y)
            self.optimizer_inner.zero_grad(set_to_none=True)
            (loss + self.moe_aux_loss()).backward()
            self.optimizer_inner.step()
            losses.append(loss.detach())
        with torch.no_grad():  # meta step: network += meta_lr * (inner - network)
            outer, inner = _float_tensors(self.network), _float_tensors(self.network_inner)
            torch._foreach_lerp_(outer, inner, self.hparams["meta_lr"])
        return {"loss": torch.stack(losses).mean()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def _float_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t for t in module.state_dict().values() if t.is_floating_point()]


@torch.no_grad()
def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter and buffer in place (the inner optimizer keeps pointing at them)."""
    torch._foreach_copy_(list(target.state_dict().values()), list(source.state_dict().values()))
