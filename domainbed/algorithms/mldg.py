"""MLDG (Li et al., AAAI 2018, "Learning to Generalize: Meta-Learning for Domain Generalization"),
DomainBed's first-order version.

The training domains are split at random into meta-train and meta-test domains. For each
meta-train domain i (paired with a meta-test domain j): Gi is the gradient of its loss, a fresh
Adam step along Gi gives inner weights, Gj is the gradient of domain j's loss at those weights,
and the step uses Gi + mldg_beta * Gj (summed over pairs, divided by the number of domains):
it rewards a step on one domain that also lowers the loss on an unseen one. As in DomainBed, no
second derivative goes through the inner step (first-order MAML).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .base import RunInfo
from .erm import ERM


def split_meta_train_test(minibatches, num_meta_test: int = 1):
    """Pairs ``((x_i, y_i), (x_j, y_j))``: a random permutation of the domains (``torch.randperm``)
    puts its last ``num_meta_test`` in meta-test, every other domain is paired with them in turn,
    and both batches of a pair are cut to the shorter one."""
    order = torch.randperm(len(minibatches)).tolist()
    meta_train, meta_test = order[:len(order) - num_meta_test], order[len(order) - num_meta_test:]
    pairs = []
    for i, j in zip(meta_train, itertools.cycle(meta_test)):
        (xi, yi), (xj, yj) = minibatches[i], minibatches[j]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


def fresh_adam_step(param: torch.Tensor, gradient: torch.Tensor, lr: float, weight_decay: float,
                    eps: float = 1e-8) -> torch.Tensor:
    """Where the first step of a newly created ``torch.optim.Adam`` moves ``param``: with no
    history its bias-corrected moments give ``lr * g / (|g| + eps)``, g the gradient plus the L2
    weight decay, whatever the betas."""
    g = gradient + weight_decay * param
    return param - lr * g / (g.abs() + eps)


class MLDG(ERM):
    """First-order MLDG (see the module docstring); the inner step is that of a fresh Adam, as
    DomainBed's per-pair copy of the network with its own new Adam, computed without the copy.

    Both forwards of a pair run on this network (the inner one at the inner weights, through
    ``functional_call``), so each includes its MoE balance loss, and BatchNorm statistics, where a
    backbone has them, follow both forwards rather than a discarded copy's.
    """

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("mldg_beta", 1.0, lambda r: float(10 ** r.uniform(-1, 1)), low=0.0)
        space.add("n_meta_test", 2, lambda r: int(r.choice([1, 2])), low=1)

    @classmethod
    def check_run(cls, hparams: dict, run: RunInfo) -> None:
        super().check_run(hparams, run)
        if run.num_train_domains <= hparams["n_meta_test"]:
            raise ValueError(f"MLDG holds out n_meta_test={hparams['n_meta_test']} of the "
                             f"{run.num_train_domains} training domains for meta-test and needs at least one "
                             "left to meta-train; lower n_meta_test or hold out fewer environments")

    def update(self, minibatches, unlabeled=None) -> dict:
        names, params = zip(*self.network.named_parameters())
        lr, weight_decay, beta = self.hparams["lr"], self.hparams["weight_decay"], self.hparams["mldg_beta"]
        accumulated = [torch.zeros_like(p) for p in params]
        objective = 0.0
        for (xi, yi), (xj, yj) in split_meta_train_test(minibatches, self.hparams["n_meta_test"]):
            loss_i = F.cross_entropy(self.network(xi), yi)
            grads_i = torch.autograd.grad(loss_i + self.moe_aux_loss(), params, allow_unused=True)
            # a parameter without gradient is one Adam would skip: it stays where it is
            inner = [p.detach() if g is None else fresh_adam_step(p.detach(), g, lr, weight_decay)
                     for p, g in zip(params, grads_i)]
            inner = [w.requires_grad_() for w in inner]
            logits_j = functional_call(self.network, dict(zip(names, inner)), (xj,))
            loss_j = F.cross_entropy(logits_j, yj)
            grads_j = torch.autograd.grad(loss_j + self.moe_aux_loss(), inner, allow_unused=True)
            for total, g_i, g_j in zip(accumulated, grads_i, grads_j):
                if g_i is not None:
                    total.add_(g_i, alpha=1 / len(minibatches))
                if g_j is not None:
                    total.add_(g_j, alpha=beta / len(minibatches))
            objective = objective + loss_i.detach() + beta * loss_j.detach()

        self.optimizer.zero_grad(set_to_none=True)
        for param, total in zip(params, accumulated):
            param.grad = total
        self.optimizer.step()
        return {"loss": objective / len(minibatches)}
