"""MIRO (Cha et al., ECCV 2022, "Domain Generalization by Mutual-Information Regularization with
Pre-trained Models").

The pre-trained model is a proxy of the oracle model, whose features generalise to every domain.
MIRO maximises a variational lower bound of the mutual information between the intermediate
features of the model being trained and those of the frozen pre-trained model: at each chosen
layer, a Gaussian with mean encoder ``mean(f) = f`` (the identity) and a learned channel-wise
variance ``var = softplus(b) + eps`` should explain the pre-trained features ``f_pre``, i.e.

    loss = CE + ld * sum over layers of mean((mean(f) - f_pre)^2 / var + log var) / 2.

Intermediate features come from timm's ``forward_intermediates``, in the same forward as the
logits. Layers: on a ViT (GMoE included) the outputs of the blocks ending each quarter of the
depth (blocks 2, 5, 8, 11 of 12, as MIRO's CLIP-ViT "block" layers); on a ResNet (and other
hierarchical CNNs) the stem and every stage (MIRO's "stem_block" default; timm's stem feature is
taken before the max-pool). The variance is per channel.

A ViT block's feature is its whole output, the class (and any other prefix) token included, as in
MIRO's code, which hooks CLIP-ViT's residual blocks and regularises their full ``[HW + 1, B, C]``
output. The class token is what a token-pooled ViT's head reads, so leaving it out would leave the
features the classifier sees unregularised. It is laid out channels-first, ``(B, C, tokens, 1)``,
so one per-channel variance serves ViTs and CNN feature maps alike.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from .erm import ERM

VARIANCE_INIT, VARIANCE_EPS = 0.1, 1e-5  # MIRO's VarianceEncoder defaults


def miro_penalty(features: list[torch.Tensor], pre_features: list[torch.Tensor],
                 variances: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of mean((f - f_pre)^2 / var + log var) / 2 (the negative Gaussian
    log-likelihood of the pre-trained features up to a constant; the mean encoder is the identity)."""
    return sum(((f - pre).pow(2) / var + var.log()).mean() / 2
               for f, pre, var in zip(features, pre_features, variances, strict=True))


def feature_layers(featurizer: nn.Module) -> list[int]:
    """The ``forward_intermediates`` indices MIRO regularises (see the module docstring)."""
    if isinstance(featurizer, VisionTransformer):
        depth = len(featurizer.blocks)
        return sorted({math.ceil(quarter * depth / 4) - 1 for quarter in (1, 2, 3, 4)})
    if not hasattr(featurizer, "forward_intermediates") or not hasattr(featurizer, "feature_info"):
        raise ValueError(f"MIRO needs a timm backbone with forward_intermediates (ViT, GMoE, ResNet), "
                         f"got {type(featurizer).__name__}")
    return list(range(len(featurizer.feature_info)))


def intermediate_features(featurizer: nn.Module, x: torch.Tensor, layers: list[int]):
    """``(final, features)`` of ``forward_intermediates``, the features channels-first; a ViT's are
    its blocks' full outputs (prefix tokens first, as in the block) laid out ``(B, C, tokens, 1)``."""
    if not isinstance(featurizer, VisionTransformer):
        return featurizer.forward_intermediates(x, indices=layers)
    final, outputs = featurizer.forward_intermediates(x, indices=layers, output_fmt="NLC",
                                                      return_prefix_tokens=True)
    features = []
    for output in outputs:
        if isinstance(output, tuple):  # (patch tokens, prefix tokens)
            patches, prefix = output
            output = torch.cat([prefix, patches], dim=1)
        features.append(output.transpose(1, 2).unsqueeze(-1))
    return final, features


class _FrozenFeaturizer(nn.Module):
    """A copy of the featurizer that never trains: no gradients, always in eval mode (no dropout,
    drop-path or router noise in the regression targets)."""

    def __init__(self, featurizer: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(featurizer).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "_FrozenFeaturizer":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        return intermediate_features(self.module, x, layers)[1]


class _VarianceEncoder(nn.Module):
    """A learned per-channel variance ``softplus(b) + eps`` of channels-first features,
    ``VARIANCE_INIT`` at the start (MIRO's bias-only encoder)."""

    def __init__(self, channels: int):
        super().__init__()
        init = math.log(math.expm1(VARIANCE_INIT - VARIANCE_EPS))  # softplus^-1
        self.b = nn.Parameter(torch.full((1, channels, 1, 1), init))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.b) + VARIANCE_EPS


class MIRO(ERM):
    """ERM + ``ld`` x the mutual-information regulariser towards the initial (pre-trained)
    featurizer, which is kept frozen as ``pre_featurizer`` (a registered module: it is in the state
    dict, so a resumed run regularises towards the same model). The variance encoders train with
    Adam at ``lr * lr_mult``.

    Hparams as MIRO's code (``ld`` 0.1, ``lr_mult`` 10; its README tunes ``ld`` per dataset in
    {0.01, 0.1}); the random draw of ``ld`` is the paper's search set {1, 0.1, 0.01, 0.001}, and
    ``lr_mult`` is not searched. Classifier: ERM's (linear unless ``nonlinear_classifier``). As in
    MIRO's code, the featurizer's BatchNorm layers keep their (pre-trained) statistics.
    """

    @classmethod
    def define_hparams(cls, space) -> None:
        space.add("ld", 0.1, lambda r: float(r.choice([1.0, 0.1, 0.01, 0.001])), low=0.0)
        space.add("lr_mult", 10.0, lambda r: 10.0, low=0.0)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.layers = feature_layers(self.featurizer)
        self.pre_featurizer = _FrozenFeaturizer(self.featurizer)
        self.var_encoders = nn.ModuleList(_VarianceEncoder(self.featurizer.feature_info[i]["num_chs"])
                                          for i in self.layers)
        self.optimizer = torch.optim.Adam([
            {"params": self.network.parameters()},
            {"params": self.var_encoders.parameters(), "lr": hparams["lr"] * hparams["lr_mult"]},
        ], lr=hparams["lr"], weight_decay=hparams["weight_decay"])
        self.train()  # BatchNorm frozen from the start

    def train(self, mode: bool = True) -> "MIRO":
        """BatchNorm stays in eval mode (MIRO's ResNet featurizer freezes it), so the features are
        normalised as the pre-trained model's are."""
        super().train(mode)
        for module in self.featurizer.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def update(self, minibatches, unlabeled=None) -> dict:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        final, features = intermediate_features(self.featurizer, x, self.layers)
        loss = F.cross_entropy(self.classifier(self.featurizer.forward_head(final)), y)
        penalty = miro_penalty(features, self.pre_featurizer(x, self.layers),
                               [encoder() for encoder in self.var_encoders])
        loss = loss + self.hparams["ld"] * penalty
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.moe_aux_loss()).backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "reg_loss": penalty.detach()}
