"""DomainBed's ``domainbed.networks`` import path: ``Featurizer``, ``Classifier``, ``MLP``, ``Identity``.

``Featurizer(input_shape, hparams)`` takes DomainBed's hparams (``resnet18``, ``resnet50_augmix``,
``vit``, ``dinov2``, ``resnet_dropout``, ``freeze_bn``..., as its registry returns them) or ours
(``backbone``, ``dropout``...), and returns our featurizer (a timm model, see
``domainbed.models.backbones``) with DomainBed's ``n_outputs`` beside timm's ``num_features``. A
1-D input shape gets DomainBed's ``MLP`` of width ``mlp_width``, as in DomainBed.
"""

from __future__ import annotations

import torch.nn as nn

from .algorithms.networks import MLP
from .models.backbones import build_classifier, build_featurizer

__all__ = ["Featurizer", "Classifier", "MLP", "Identity"]

Identity = nn.Identity


def _our_hparams(input_shape: tuple[int, ...], hparams: dict) -> dict:
    """Our featurizer hparams for ``hparams`` in DomainBed's names or ours (ours win; missing
    ones take the registry's defaults; DomainBed's small 28/32 px images default to our micro ViT)."""
    from .hparams.registry import DOMAINBED_NAMES, from_domainbed_names, hparam_space

    dataset = "RotatedMNIST" if tuple(input_shape[1:]) in ((28, 28), (32, 32)) else "PACS"
    ours = {name: value for name, value in hparams.items() if name not in DOMAINBED_NAMES}
    if "backbone" not in hparams:
        ours = from_domainbed_names("ERM", dataset, dict(hparams))
    space = hparam_space("ERM", dataset, ours.get("backbone"), ours.get("features"))
    return {**space.defaults(), **ours}


def Featurizer(input_shape, hparams: dict) -> nn.Module:  # DomainBed's name
    """The featurizer DomainBed's code would ask for, built here (see the module docstring)."""
    input_shape = tuple(input_shape)
    if len(input_shape) == 1:
        return MLP(input_shape[0], hparams["mlp_width"], hparams)
    featurizer = build_featurizer(input_shape, _our_hparams(input_shape, hparams))
    featurizer.n_outputs = featurizer.num_features
    return featurizer


def Classifier(in_features: int, out_features: int, is_nonlinear: bool = False) -> nn.Module:
    """DomainBed's classifier: a Linear, or its 3-layer MLP (``nonlinear_classifier``)."""
    return build_classifier(in_features, out_features, is_nonlinear)
