"""MTL (Blanchard et al., JMLR 2021, "Domain Generalization by Marginal Transfer Learning"),
DomainBed's neural version.

The classifier sees each example's features next to an embedding of its domain's marginal
distribution: the mean of the domain's features (a kernel mean embedding with the learned feature
map). A test domain is embedded from the batch being predicted, so the prediction can adapt to the
domain without labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.backbones import build_classifier, build_featurizer
from .base import Algorithm


class MTL(Algorithm):
    """Classifier on ``[features, domain embedding]``; one embedding buffer row per training domain;
    the cross-entropies of the domains are summed (as DomainBed).

    Training domain ``d``'s embedding is ``mtl_ema * mean(batch features) + (1 - mtl_ema) *
    embeddings[d]`` (DomainBed's weighting: ``mtl_ema`` weighs the *new* batch); it is stored,
    detached, as ``embeddings[d]`` and its batch part is differentiated through. ``predict``
    embeds the batch it is given by its feature mean and leaves the buffer alone.

    Deviation from DomainBed: its ``predict`` calls ``.normal_()`` on the embedding, which
    overwrites it in place with standard Gaussian noise, so the classifier never sees a domain
    embedding, in training or at test (facebookresearch/DomainBed issue #159, open). We implement
    the paper's semantics: the embedding itself, with no noise.
    """

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("mtl_ema", 0.99, lambda r: float(r.choice([0.5, 0.9, 0.99, 1.0])), low=0.0, high=1.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = build_featurizer(input_shape, hparams)
        self.classifier = build_classifier(2 * self.featurizer.num_features, num_classes,
                                           hparams.get("nonlinear_classifier", False))
        self.optimizer = torch.optim.Adam([*self.featurizer.parameters(), *self.classifier.parameters()],
                                          lr=hparams["lr"], weight_decay=hparams["weight_decay"])
        self.register_buffer("embeddings", torch.zeros(num_domains, self.featurizer.num_features))

    def domain_embedding(self, features: torch.Tensor, domain: int | None = None) -> torch.Tensor:
        """The embedding of the batch's domain: its feature mean, blended into (and stored as) the
        running embedding of training domain ``domain`` when one is given."""
        embedding = features.mean(dim=0)
        if domain is not None:
            ema = self.hparams["mtl_ema"]
            embedding = ema * embedding + (1 - ema) * self.embeddings[domain].clone()
            with torch.no_grad():
                self.embeddings[domain] = embedding.detach()
        return embedding

    def classify(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([features, embedding.expand_as(features)], dim=1))

    def update(self, minibatches, unlabeled=None) -> dict:
        loss = 0.0
        for domain, (x, y) in enumerate(minibatches):
            features = self.featurizer(x)
            loss = loss + F.cross_entropy(self.classify(features, self.domain_embedding(features, domain)), y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        features = self.featurizer(x)
        return self.classify(features, self.domain_embedding(features))
