"""URM (Krishnamachari et al., TMLR 2024, "Uniformly Distributed Feature Representations for Fair
and Robust Learning"), DomainBed's adversarial variant.

ERM whose features are pushed towards the uniform distribution on a box: a discriminator learns to
tell the features from uniform noise on the box, and the featurizer learns the task while making
the discriminator take its features for noise. The box is the range of the generator's output
activation (``urm_generator_output``): tanh -> [-1, 1), sigmoid or relu -> [0, 1).

DomainBed replaces its featurizers' final activation with that activation. timm featurizers have
no such slot, so here it is a module of the algorithm, ``generator_output``, applied to the
featurizer's output: ``network`` is featurizer -> generator_output -> classifier, and predictions
go through it too, as DomainBed's. DomainBed's ``identity`` output is not offered (its noise range
is undefined and DomainBed's URM raises on it). The ``urm`` hparam is declared with its only value,
``adversarial`` (this method), so that records and ``--hparams`` carry DomainBed's keys.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .erm import ERM

# activation applied to the features -> the range [low, high) of the uniform noise it is compared to
GENERATOR_OUTPUTS = {"tanh": (nn.Tanh, (-1.0, 1.0)), "sigmoid": (nn.Sigmoid, (0.0, 1.0)), "relu": (nn.ReLU, (0.0, 1.0))}
DISCRIMINATOR_WIDTH = 100


def _discriminator(in_features: int, hidden_layers: int) -> nn.Sequential:
    """DomainBed's URM discriminator: width-100 LeakyReLU layers, one logit ("is noise")."""
    layers = [nn.Linear(in_features, DISCRIMINATOR_WIDTH), nn.LeakyReLU()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(DISCRIMINATOR_WIDTH, DISCRIMINATOR_WIDTH), nn.LeakyReLU()]
    return nn.Sequential(*layers, nn.Linear(DISCRIMINATOR_WIDTH, 1))


class URM(ERM):
    """One step, as DomainBed's: (1) featurizer + classifier (ERM's Adam) on the cross-entropy plus
    ``urm_adv_lambda`` x the discriminator's binary cross-entropy of the features against the
    "noise" label; (2) the discriminator (its own optimizer) on noise labelled 1 plus
    ``urm_adv_lambda`` x the same features, detached, labelled 0 (labels drawn uniformly within
    ``urm_discriminator_label_smoothing`` of 1 and 0 when that is positive)."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("urm", "adversarial", lambda r: "adversarial", choices=("adversarial",))
        space.add("urm_adv_lambda", 0.1, lambda r: float(r.uniform(0, 0.2)), low=0.0)
        # DomainBed's default is the int 0 (its draws are the float 0.0)
        space.add("urm_discriminator_label_smoothing", 0, lambda r: 0.0, kind=(int, float), low=0.0, high=1.0)
        space.add("urm_discriminator_optimizer", "adam", lambda r: "adam", choices=("adam", "sgd"))
        space.add("urm_discriminator_hidden_layers", 1, lambda r: int(r.choice([1, 2, 3])), low=0)
        space.add("urm_generator_output", "tanh", lambda r: str(r.choice(["tanh", "relu"])),
                  choices=tuple(GENERATOR_OUTPUTS))
        if space.small_images:
            space.add("urm_discriminator_lr", 1e-3, lambda r: 10 ** r.uniform(-5.5, -3.5), low=0.0)
        else:
            space.add("urm_discriminator_lr", 5e-5, lambda r: 10 ** r.uniform(-6, -4.5), low=0.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        activation, self.noise_range = GENERATOR_OUTPUTS[hparams["urm_generator_output"]]
        self.generator_output = activation()
        # ERM's optimizer already holds the featurizer's and classifier's parameters (the activation has none)
        self.network = nn.Sequential(self.featurizer, self.generator_output, self.classifier)
        self.discriminator = _discriminator(self.featurizer.num_features, hparams["urm_discriminator_hidden_layers"])
        lr, weight_decay = hparams["urm_discriminator_lr"], hparams["weight_decay"]
        if hparams["urm_discriminator_optimizer"] == "sgd":
            self.discriminator_opt = torch.optim.SGD(self.discriminator.parameters(), lr=lr,
                                                     weight_decay=weight_decay, momentum=0.9)
        else:
            self.discriminator_opt = torch.optim.Adam(self.discriminator.parameters(), lr=lr,
                                                      weight_decay=weight_decay)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator_output(self.featurizer(x))

    def uniform_noise(self, features: torch.Tensor) -> torch.Tensor:
        low, high = self.noise_range
        return low + (high - low) * torch.rand_like(features)

    def discriminator_targets(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise targets, feature targets), one per row of ``features``: 1 and 0, or with label
        smoothing s uniform draws in [1 - s, 1) and [0, s) (noise's first, as DomainBed draws them)."""
        n, smoothing = len(features), self.hparams["urm_discriminator_label_smoothing"]
        if not smoothing:
            return features.new_ones(n), features.new_zeros(n)
        noise_targets = 1 - smoothing + smoothing * torch.rand(n, dtype=features.dtype, device=features.device)
        return noise_targets, smoothing * torch.rand(n, dtype=features.dtype, device=features.device)

    def discriminator_loss(self, features: torch.Tensor) -> torch.Tensor:
        noise = self.uniform_noise(features)
        noise_logits = self.discriminator(noise).squeeze(1)
        feature_logits = self.discriminator(features).squeeze(1)
        noise_targets, feature_targets = self.discriminator_targets(features)
        return (F.binary_cross_entropy_with_logits(noise_logits, noise_targets)
                + self.hparams["urm_adv_lambda"] * F.binary_cross_entropy_with_logits(feature_logits, feature_targets))

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        features = self.features(x)
        classification = F.cross_entropy(self.classifier(features), y)
        adversarial = F.binary_cross_entropy_with_logits(self.discriminator(features).squeeze(1),
                                                         features.new_ones(len(features)))  # "is noise"
        loss = classification + self.hparams["urm_adv_lambda"] * adversarial
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()

        disc_loss = self.discriminator_loss(features.detach())
        self.discriminator_opt.zero_grad(set_to_none=True)
        disc_loss.backward()
        self.discriminator_opt.step()
        return {"loss": loss.detach(), "disc_loss": disc_loss.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
