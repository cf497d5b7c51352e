"""ADRMX (Demirel et al., 2023, "ADRMX: Additive Disentanglement of Domain Features with Remix
Loss"), with DomainBed's semantics.

Two featurizers: a label one and a domain one. Their difference, label - domain, is meant to be
domain-invariant: a discriminator (DomainBed's MLP) tries to recover the domain from it while the
featurizers try to prevent that, turn by turn as in DANN (``d_steps_per_g_step`` discriminator
steps, then one generator step). The generator step trains the featurizers and three nonlinear
classifiers on: the label classifier on the label features, a second label classifier on the
invariant features, a domain classifier on the domain features, a supervised contrastive loss on
the label and on the invariant features, and the remix loss (the label classifier on invariant
features plus another example's domain features), minus ``disc_lambda`` x the discriminator's loss.
Predictions: label featurizer -> label classifier (``network``).

DomainBed's names -> ours: featurizer_label -> ``featurizer``, classifier_label_1 ->
``classifier``, classifier_label_2 -> ``classifier_invariant``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbones import build_classifier, build_featurizer
from .adversarial import domain_labels
from .base import Algorithm
from .networks import MLP

CONTRASTIVE_TEMPERATURE = 0.07
CONTRASTIVE_IN_DOMAIN_WEIGHT = 0.5  # DomainBed's SupConLossLambda(lamda=0.5)


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                                in_domain_weight: float = CONTRASTIVE_IN_DOMAIN_WEIGHT,
                                temperature: float = CONTRASTIVE_TEMPERATURE) -> torch.Tensor:
    """DomainBed's SupConLossLambda: supervised contrastive loss (Khosla et al., 2020) whose pairs are
    weighted by domain.

    With s_ij the cosine similarity of i and j over ``temperature`` and w_ij = ``in_domain_weight``
    if j is from i's domain, 1 - ``in_domain_weight`` otherwise (j != i), anchor i scores
    ``mean over positives j (same label, j != i) of log(w_ij e^s_ij / (sum_{k != i} w_ik e^s_ik + 1e-5) + 1e-5)``;
    the loss is minus the sum of the scores of the anchors that have a positive, over (their number + 1).
    """
    normalized = F.normalize(features, p=2, dim=1)
    similarity = normalized @ normalized.T / temperature
    others = ~torch.eye(len(features), dtype=torch.bool, device=features.device)
    same_domain = domains[:, None] == domains[None, :]
    weights = torch.where(same_domain, in_domain_weight, 1 - in_domain_weight) * others
    weighted = weights * similarity.exp()
    log_fraction = torch.log(weighted / (weighted.sum(dim=1, keepdim=True) + 1e-5) + 1e-5)
    positives = (labels[:, None] == labels[None, :]) & others
    num_positives = positives.sum(dim=1)
    scores = torch.where(positives, log_fraction, 0.0).sum(dim=1) / num_positives.clamp_min(1)
    has_positive = num_positives > 0
    return -(scores * has_positive).sum() / (has_positive.sum() + 1)


class ADRMX(Algorithm):
    """Each step computes both featurizers on the pooled batch; a discriminator step trains the
    discriminator on the detached invariant features (DomainBed backpropagates into the featurizers
    there too, but never applies those gradients), a generator step trains everything else.

    The remix loss picks, for each class, two random examples of that class and classifies the first
    one's invariant features plus the second one's domain features as the first one's label; the
    sum over classes is divided by the number of classes (classes with fewer than two examples add
    nothing). DomainBed's code indexes the whole batch with positions drawn within the class (so its
    pairs are mostly not of that class), contradicting its own comment and the paper; we implement
    the stated intent (as DomainBed, the two examples may share a domain).
    """

    min_train_domains = 2

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("cnt_lambda", 1.0, lambda r: 1.0, low=0.0)
        space.add("dclf_lambda", 1.0, lambda r: 1.0, low=0.0)
        space.add("disc_lambda", 0.75, lambda r: 0.75, low=0.0)
        space.add("rmxd_lambda", 1.0, lambda r: 1.0, low=0.0)
        space.add("d_steps_per_g_step", 2, lambda r: 2, low=0)
        space.add("beta1", 0.5, lambda r: 0.5, low=0.0, high=1.0)
        # the discriminator MLP: only its depth is searched (DANN's MLP hparams search all three)
        space.add("mlp_width", 256, lambda r: 256, low=1)
        space.add("mlp_depth", 9, lambda r: int(r.choice([8, 9, 10])), low=2)
        space.add("mlp_dropout", 0.0, lambda r: 0.0, low=0.0, high=1.0)
        if space.small_images:
            space.add("lr", 3e-3, lambda r: float(r.choice([5e-4, 1e-3, 2e-3, 3e-3])), low=0.0, replace=True)
        else:
            space.add("lr", 3e-5, lambda r: float(r.choice([2e-5, 3e-5, 4e-5, 5e-5])), low=0.0, replace=True)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_update_count()
        self.featurizer = build_featurizer(input_shape, hparams)
        self.featurizer_domain = build_featurizer(input_shape, hparams)
        width = self.featurizer.num_features
        self.discriminator = MLP(width, num_domains, hparams)
        self.classifier = build_classifier(width, num_classes, nonlinear=True)
        self.classifier_invariant = build_classifier(width, num_classes, nonlinear=True)
        self.classifier_domain = build_classifier(width, num_domains, nonlinear=True)
        self.network = nn.Sequential(self.featurizer, self.classifier)
        betas = (hparams["beta1"], 0.9)
        self.disc_opt = torch.optim.Adam(self.discriminator.parameters(), lr=hparams["lr"], betas=betas)
        generator = [self.featurizer, self.featurizer_domain, self.classifier, self.classifier_invariant,
                     self.classifier_domain]
        self.gen_opt = torch.optim.Adam([p for module in generator for p in module.parameters()],
                                        lr=hparams["lr"], betas=betas)

    def is_discriminator_step(self) -> bool:
        """Whether the current update (``update_count`` already incremented) trains the discriminator."""
        d_steps = self.hparams["d_steps_per_g_step"]
        return self.updates % (1 + d_steps) < d_steps

    def remix_loss(self, invariant: torch.Tensor, domain_features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        firsts, seconds = [], []
        for label in range(self.num_classes):
            members = torch.where(y == label)[0]
            order = torch.randperm(len(members))  # on the CPU generator, as DomainBed's
            if len(order) < 2:
                continue
            firsts.append(members[order[0]])
            seconds.append(members[order[1]])
        if not firsts:
            return invariant.new_zeros(())
        first, second = torch.stack(firsts), torch.stack(seconds)
        logits = self.classifier(invariant[first] + domain_features[second])
        return F.cross_entropy(logits, y[first], reduction="sum") / self.num_classes

    def update(self, minibatches, unlabeled=None) -> dict:
        self.count_update()
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        domains = domain_labels(minibatches)
        label_features = self.featurizer(x)
        domain_features = self.featurizer_domain(x)
        invariant = label_features - domain_features
        if self.is_discriminator_step():
            disc_loss = F.cross_entropy(self.discriminator(invariant.detach()), domains)
            self.disc_opt.zero_grad(set_to_none=True)
            (disc_loss + self.moe_aux_loss()).backward()
            self.disc_opt.step()
            return {"loss_disc": disc_loss.detach()}

        hp = self.hparams
        disc_loss = F.cross_entropy(self.discriminator(invariant), domains)
        losses = {
            "loss_clf_int": F.cross_entropy(self.classifier(label_features), y),
            "loss_clf_fin": F.cross_entropy(self.classifier_invariant(invariant), y),
            "loss_dmn": F.cross_entropy(self.classifier_domain(domain_features), domains),
            "loss_cnt_int": supervised_contrastive_loss(label_features, y, domains),
            "loss_cnt_final": supervised_contrastive_loss(invariant, y, domains),
            "loss_remixed": self.remix_loss(invariant, domain_features, y),
        }
        total = (losses["loss_clf_int"] + losses["loss_clf_fin"] + hp["dclf_lambda"] * losses["loss_dmn"]
                 + hp["rmxd_lambda"] * losses["loss_remixed"]
                 + hp["cnt_lambda"] * (losses["loss_cnt_int"] + losses["loss_cnt_final"])
                 - hp["disc_lambda"] * disc_loss)
        self.gen_opt.zero_grad(set_to_none=True)
        (total + self.moe_aux_loss()).backward()
        self.gen_opt.step()
        return {"loss_total": total.detach(), "loss_disc": disc_loss.detach(),
                **{name: value.detach() for name, value in losses.items()}}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
