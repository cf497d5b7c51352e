"""RSC (Huang et al., ECCV 2020, "Self-Challenging Improves Cross-Domain Generalization").

Each step mutes the features the classifier relies on most and trains on what is left, so the
network cannot lean on a few dominant features. This is DomainBed's feature-vector variant: the
muting acts on the featurizer's pooled features, so it runs on any backbone (ViT, GMoE, ResNet);
the paper mutes spatial positions or channels of a CNN's last feature maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .erm import ERM


def top_gradient_mask(feature_gradients: torch.Tensor, drop_factor: float) -> torch.Tensor:
    """Per sample (row), True for the features to keep: those whose gradient lies below the
    ``1 - drop_factor`` quantile of the row (linear interpolation, as ``np.percentile``)."""
    thresholds = torch.quantile(feature_gradients, 1 - drop_factor, dim=1, keepdim=True)
    return feature_gradients < thresholds


def spared_samples(confidence_drops: torch.Tensor, drop_factor: float) -> torch.Tensor:
    """True for the samples left unmuted: all but the ``drop_factor`` share whose true-class
    probability fell most when their top features were muted."""
    return confidence_drops < torch.quantile(confidence_drops, 1 - drop_factor)


class RSC(ERM):
    """Representation Self-Challenging: cross-entropy on features whose top-gradient share
    (``rsc_f_drop_factor``) is muted, for the share of samples (``rsc_b_drop_factor``) that the
    muting hurts most; the other samples keep all their features."""

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("rsc_f_drop_factor", 1 / 3, lambda r: float(r.uniform(0, 0.5)), low=0.0, high=1.0)
        space.add("rsc_b_drop_factor", 1 / 3, lambda r: float(r.uniform(0, 0.5)), low=0.0, high=1.0)

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        one_hot = F.one_hot(y, self.num_classes).float()
        features = self.featurizer(x)
        logits = self.classifier(features)

        # how much each feature drives the true-class logit
        feature_gradients, = torch.autograd.grad((logits * one_hot).sum(), features)
        keep_features = top_gradient_mask(feature_gradients, self.hparams["rsc_f_drop_factor"])
        with torch.no_grad():
            muted_logits = self.classifier(features * keep_features)
            confidence_drops = ((logits.softmax(1) - muted_logits.softmax(1)) * one_hot).sum(1)
        keep_samples = spared_samples(confidence_drops, self.hparams["rsc_b_drop_factor"])
        mask = (keep_features | keep_samples.unsqueeze(1)).to(features.dtype)

        loss = F.cross_entropy(self.classifier(features * mask), y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach()}
