"""Domain-adversarial training: DANN (Ganin et al., JMLR 2016, "Domain-Adversarial Training of
Neural Networks") and CDANN (Li et al., ECCV 2018, "Deep Domain Generalization via Conditional
Invariant Adversarial Networks"), with DomainBed's semantics.

A discriminator (DomainBed's MLP) learns to tell the training domains apart from the features; the
featurizer and classifier learn the task while making the discriminator fail. Instead of a gradient
reversal layer the two players take turns, driven by the ``update_count`` buffer: update n
(counting from 1) is a generator step when ``n % (d_steps_per_g_step + 1) == d_steps_per_g_step``
and a discriminator step otherwise (with the default 1: generator, discriminator, generator, ...).
Each player has its own Adam (``beta1``, 0.9) and its own lr / weight decay (``lr_d``,
``weight_decay_d``, ``lr_g``, ``weight_decay_g``; DomainBed's ``lr`` and ``weight_decay`` are unused).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbones import build_classifier, build_featurizer
from .base import Algorithm
from .networks import MLP, mlp_hparams


def domain_labels(minibatches) -> torch.Tensor:
    """The index of each example's training domain, in the order of the concatenated minibatches."""
    return torch.cat([torch.full((len(x),), i, dtype=torch.long, device=x.device)
                      for i, (x, _) in enumerate(minibatches)])


def class_balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-example weights ``1 / (count of its class * number of class slots)``, DomainBed's CDANN
    weighting: each class present contributes the same total weight. The slots are the labels
    0..max(y), as in DomainBed (a class absent from the batch still counts as a slot)."""
    counts = torch.bincount(y)
    return 1.0 / (counts[y] * len(counts)).float()


def gradient_penalty(logits: torch.Tensor, domains: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the squared norm of the gradient of the summed domain cross-entropy with
    respect to the discriminator's input (DomainBed after its fix in PR #106): keeps the
    discriminator smooth around the features. Differentiable (``create_graph``)."""
    grad, = torch.autograd.grad(F.cross_entropy(logits, domains, reduction="sum"), inputs, create_graph=True)
    return grad.pow(2).sum(dim=1).mean()


class AbstractDANN(Algorithm):
    """Featurizer + classifier (the generator side) against a domain discriminator.

    Discriminator loss: the domain cross-entropy of the discriminator (class-balanced in CDANN)
    plus ``grad_penalty`` x ``gradient_penalty``. Generator loss: the task cross-entropy minus
    ``lambda`` x that discriminator loss, penalty included, exactly as DomainBed's. In a
    discriminator step the featurizer still runs (and its MoE balance loss is consumed) but the
    discriminator sees detached features: DomainBed backpropagates into the featurizer there too,
    yet those gradients are never applied (they are cleared before the next generator step), so
    skipping them changes no update. The penalty is not computed when ``grad_penalty`` is 0.
    """

    min_train_domains = 2
    conditional: ClassVar[bool] = False  # the discriminator also sees a learned embedding of the class
    class_balance: ClassVar[bool] = False  # the discriminator loss weights classes equally

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("lambda", 1.0, lambda r: 10 ** r.uniform(-2, 2), low=0.0)
        space.add("weight_decay_d", 0.0, lambda r: 10 ** r.uniform(-6, -2), low=0.0)
        space.add("d_steps_per_g_step", 1, lambda r: int(2 ** r.uniform(0, 3)), low=0)
        space.add("grad_penalty", 0.0, lambda r: 10 ** r.uniform(-2, 1), low=0.0)
        space.add("beta1", 0.5, lambda r: float(r.choice([0.0, 0.5])), low=0.0, high=1.0)
        mlp_hparams(space)
        if space.small_images:
            space.add("lr_g", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), low=0.0)
            space.add("lr_d", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), low=0.0)
            space.add("weight_decay_g", 0.0, lambda r: 0.0, low=0.0)
        else:
            space.add("lr_g", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), low=0.0)
            space.add("lr_d", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), low=0.0)
            space.add("weight_decay_g", 0.0, lambda r: 10 ** r.uniform(-6, -2), low=0.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()
        self.featurizer = build_featurizer(input_shape, hparams)
        width = self.featurizer.num_features
        self.classifier = build_classifier(width, num_classes, hparams.get("nonlinear_classifier", False))
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.discriminator = MLP(width, num_domains, hparams)
        discriminator_side = list(self.discriminator.parameters())
        if self.conditional:
            self.class_embeddings = nn.Embedding(num_classes, width)
            discriminator_side += list(self.class_embeddings.parameters())
        betas = (hparams["beta1"], 0.9)
        self.disc_opt = torch.optim.Adam(discriminator_side, lr=hparams["lr_d"],
                                         weight_decay=hparams["weight_decay_d"], betas=betas)
        self.gen_opt = torch.optim.Adam(self.network.parameters(), lr=hparams["lr_g"],
                                        weight_decay=hparams["weight_decay_g"], betas=betas)

    def is_discriminator_step(self) -> bool:
        """Whether the current update (``update_count`` already incremented) trains the discriminator."""
        d_steps = self.hparams["d_steps_per_g_step"]
        return self.updates % (1 + d_steps) < d_steps

    def discriminator_loss(self, features: torch.Tensor, y: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        disc_input = features + self.class_embeddings(y) if self.conditional else features
        logits = self.discriminator(disc_input)
        if self.class_balance:
            loss = (class_balanced_weights(y) * F.cross_entropy(logits, domains, reduction="none")).sum()
        else:
            loss = F.cross_entropy(logits, domains)
        if self.hparams["grad_penalty"]:
            loss = loss + self.hparams["grad_penalty"] * gradient_penalty(logits, domains, disc_input)
        return loss

    def update(self, minibatches, unlabeled=None) -> dict:
        self.count_update()
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        domains = domain_labels(minibatches)
        features = self.featurizer(x)
        if self.is_discriminator_step():
            # a leaf that requires grad, so that the penalty can differentiate with respect to it
            disc_loss = self.discriminator_loss(features.detach().requires_grad_(), y, domains)
            self.disc_opt.zero_grad(set_to_none=True)
            (disc_loss + self.moe_aux_loss()).backward()
            self.disc_opt.step()
            return {"disc_loss": disc_loss.detach()}
        disc_loss = self.discriminator_loss(features, y, domains)
        gen_loss = F.cross_entropy(self.classifier(features), y) - self.hparams["lambda"] * disc_loss
        self.gen_opt.zero_grad(set_to_none=True)
        (gen_loss + self.moe_aux_loss()).backward()
        self.gen_opt.step()
        return {"gen_loss": gen_loss.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class DANN(AbstractDANN):
    """Unconditional DANN: the discriminator sees the features alone."""


class CDANN(AbstractDANN):
    """Conditional DANN: the discriminator sees features + a learned embedding of the class (trained
    by the discriminator's optimizer), and its loss weights the classes equally."""

    conditional = True
    class_balance = True
