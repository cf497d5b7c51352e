"""ERM++ (Teterwak et al., 2023, "ERM++: An Improved Baseline for Domain Generalization"), as in
DomainBed.

ERM with three changes to how it trains and predicts:

- **Linear probing first.** Updates 0 to ``linear_steps`` (DomainBed's count: ``linear_steps + 1``
  updates) train only the classifier, with its own optimizer at ``linear_lr``; then the whole
  network trains with ERM's optimizer at ``lr``. Fine-tuning from a fitted head distorts the
  pre-trained features less than fine-tuning from a random one.
- **Weight averaging.** Predictions use the uniform average of the weights from update 600 on
  (DomainBed's fixed start; before it the average is the current weights). Unless ``freeze_bn``,
  the average's BatchNorm statistics are refreshed with every training batch.
- **Automatic learning rate.** Once probing is over, each checkpoint's loss of the averaged model on
  the training domains' held-out splits drives ``ReduceLROnPlateau`` (patience 1, factor 0.1) on
  the fine-tuning optimizer; after the third reduction training is over (ERM++ stops there) and the
  learning rate is 0. This hook replaces DomainBed's ``set_lr``, which its train.py calls.

``lars`` uses LARS instead of Adam for both optimizers. ``freeze_bn`` is the common featurizer
hparam (DomainBed declares it for every algorithm): the featurizer's BatchNorm layers stay in eval
mode while training (their statistics stay the pre-trained ones), and the average's statistics are
not refreshed either.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .averaging import AveragedNetwork, NetworkPredictor
from .base import Checkpoint, RunInfo
from .erm import ERM


class _LARS(torch.optim.Optimizer):
    """DomainBed's LARS: SGD with momentum where each weight matrix's step (gradient plus weight
    decay) is rescaled to ``trust_coefficient * ||weight|| / ||step||``; tensors of at most one
    dimension (biases, norm weights) take plain momentum steps without weight decay."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                step = param.grad
                if param.ndim > 1:
                    step = step.add(param, alpha=group["weight_decay"])
                    param_norm, step_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(step)
                    trust = group["trust_coefficient"] * param_norm / step_norm
                    step = step * torch.where((param_norm > 0) & (step_norm > 0), trust, torch.ones_like(trust))
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                state["momentum_buffer"].mul_(group["momentum"]).add_(step)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _refresh_batchnorm_statistics(network: nn.Module, x: torch.Tensor) -> None:
    """Move ``network``'s BatchNorm running statistics towards batch ``x``'s (one training-mode
    BatchNorm forward; every other layer stays in eval mode)."""
    norms = _batchnorms(network)
    if not norms:  # ViT and GMoE: nothing to refresh
        return
    for norm in norms:
        norm.train()
    network(x)
    for norm in norms:
        norm.eval()


class ERMPlusPlus(ERM):
    """ERM with linear probing, weight averaging and a validation-driven learning rate (see the
    module docstring)."""

    SMA_START_ITER = 600  # DomainBed's ErmPlusPlusMovingAvg (not an hparam there)
    MAX_LR_REDUCTIONS = 3

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("linear_lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), low=0.0)
        space.add("linear_steps", 500, lambda r: 500, low=0)
        space.add("lars", False, kind=bool)

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        super().check_run(hparams, run)
        if hparams["linear_steps"] + 1 >= run.steps:
            raise ValueError(f"ERMPlusPlus trains only the classifier for linear_steps={hparams['linear_steps']} "
                             f"(+1) updates but the run has {run.steps} steps; lower linear_steps or train longer")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        optimizer_class = _LARS if hparams["lars"] else torch.optim.Adam
        self.optimizer = optimizer_class(self.network.parameters(), lr=hparams["lr"],
                                         weight_decay=hparams["weight_decay"])
        self.linear_optimizer = optimizer_class(self.classifier.parameters(), lr=hparams["linear_lr"],
                                                weight_decay=hparams["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, "min", patience=1)
        self.network_sma = AveragedNetwork(self.network)
        self.register_update_count()
        self.register_buffer("lr_reductions", torch.tensor(0))

    @property
    def probing(self) -> bool:
        """Whether the next update trains only the classifier."""
        return self.updates <= self.hparams["linear_steps"]

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        probing = self.probing
        features = self.featurizer(x)
        if probing:  # the featurizer does not train: no gradient through it
            features = features.detach()
        loss = F.cross_entropy(self.classifier(features), y)
        self.network.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        (self.linear_optimizer if probing else self.optimizer).step()
        self.count_update()
        if self.updates >= self.SMA_START_ITER:
            self.network_sma.update(self.network)
        else:
            self.network_sma.reset(self.network)
        if not self.hparams.get("freeze_bn", False):  # frozen: the featurizer's BatchNorm stays as it is
            _refresh_batchnorm_statistics(self.network_sma.module, x)
        return {"loss": loss.detach()}

    def on_checkpoint(self, checkpoint: Checkpoint) -> dict:
        values = {}
        if not self.probing and int(self.lr_reductions) < self.MAX_LR_REDUCTIONS:
            values["sma_val_loss"] = checkpoint.validation.loss(self.network_sma)
            lr_before = self.learning_rate
            self.scheduler.step(values["sma_val_loss"])
            if self.learning_rate != lr_before:
                self.lr_reductions += 1
                if int(self.lr_reductions) == self.MAX_LR_REDUCTIONS:  # training is over
                    for group in self.optimizer.param_groups:
                        group["lr"] = 0.0
        values["lr"] = self.learning_rate
        return values

    @property
    def learning_rate(self) -> float:
        """The fine-tuning optimizer's current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def evaluation_model(self):
        return NetworkPredictor(self.network_sma.module, self, averaged=True)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network_sma(x)
