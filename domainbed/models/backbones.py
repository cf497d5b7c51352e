"""Featurizers and classifiers for DomainBed algorithms, from hparams.

Every algorithm gets its networks here, so any algorithm runs on any timm backbone (ERM with DeiT-S
is the fair baseline for GMoE-S; Fish on a GMoE is the paper's GMoE+Fish). A featurizer is a timm
model built with ``num_classes=0``: its forward is ``forward_features`` + pooling (+ the head's
dropout), and ``num_features`` is its width. Names are timm model names; ``resnet50`` means
torchvision's ImageNet weights, as in DomainBed.
"""

from __future__ import annotations

import os

import timm
import torch.nn as nn

from ..moe import MoEConfig
from .gmoe import MOE_MODELS

# DomainBed's ResNets use torchvision's ImageNet weights; timm names them with the tv_in1k tag.
ALIASES = {"resnet50": "resnet50.tv_in1k", "resnet18": "resnet18.tv_in1k"}
# Families whose constructor takes img_size (patch-embedding models) and drop_path_rate.
_TRANSFORMER_MODULES = ("vision_transformer", "deit", "gmoe")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be had; never fall back to random init."""


def is_moe_backbone(name: str) -> bool:
    """Whether the timm model ``name`` has sparse MoE layers (and so takes the MoE hparams)."""
    return name.split(".")[0] in MOE_MODELS


def _is_transformer(model_name: str) -> bool:
    entrypoint = timm.models.model_entrypoint(model_name.split(".")[0])
    return entrypoint.__module__.rsplit(".", 1)[-1] in _TRANSFORMER_MODULES


def timm_name(backbone: str) -> str:
    """The timm model name of a ``backbone`` hparam; a ValueError naming examples if timm lacks it."""
    name = ALIASES.get(backbone, backbone)
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown backbone '{backbone}'; use a timm model name such as "
                         "resnet50, deit_small_patch16_224, gmoe_small_patch16_224, "
                         "vit_micro_patch4_32, gmoe_micro_patch4_32")
    return name


def create_backbone(input_shape: tuple[int, ...], hparams: dict, num_classes: int = 0) -> nn.Module:
    """A timm model for images of ``input_shape`` configured by the backbone (and MoE) hparams.

    ``num_classes=0`` (the default) gives a featurizer: pooled features, no classification head.
    """
    name = timm_name(hparams["backbone"])
    kwargs: dict = dict(num_classes=num_classes, in_chans=input_shape[0], drop_rate=hparams.get("dropout", 0.0))
    if _is_transformer(name):
        kwargs.update(img_size=tuple(input_shape[1:]), drop_path_rate=hparams.get("drop_path_rate", 0.0))
    if is_moe_backbone(name):
        kwargs["moe"] = MoEConfig.from_hparams(hparams)
    kwargs.update(hparams.get("backbone_kwargs") or {})

    pretrained = bool(hparams.get("pretrained", False))
    weights_file = hparams.get("pretrained_file") or ""
    if weights_file:
        if not os.path.isfile(weights_file):
            raise PretrainedWeightsError(f"pretrained_file '{weights_file}' does not exist; "
                                         "give the path of a saved timm/DeiT state dict")
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = dict(file=weights_file)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:  # hub unreachable, no cached file, bad file...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedWeightsError(
            f"could not load pretrained weights for '{name}' ({reason}). Provide them: let timm "
            f"download them once into its Hugging Face cache (HF_HOME), or pass a local file with "
            f"--hparams '{{\"pretrained_file\": \"/path/to/weights.pth\"}}', or train from scratch with "
            f"--hparams '{{\"pretrained\": false}}'") from error


def build_featurizer(input_shape: tuple[int, ...], hparams: dict) -> nn.Module:
    """DomainBed's ``Featurizer``: images -> ``featurizer.num_features`` pooled features."""
    return create_backbone(input_shape, hparams, num_classes=0)


def build_classifier(in_features: int, num_classes: int, nonlinear: bool = False) -> nn.Module:
    """DomainBed's ``Classifier``: linear, or a two-hidden-layer MLP when ``nonlinear``."""
    if not nonlinear:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Linear(in_features, in_features // 2), nn.ReLU(),
                         nn.Linear(in_features // 2, in_features // 4), nn.ReLU(),
                         nn.Linear(in_features // 4, num_classes))


def build_network(input_shape: tuple[int, ...], num_classes: int, hparams: dict) -> nn.Module:
    """featurizer + classifier as one ``nn.Sequential`` (DomainBed's ``network``)."""
    featurizer = build_featurizer(input_shape, hparams)
    classifier = build_classifier(featurizer.num_features, num_classes, hparams.get("nonlinear_classifier", False))
    return nn.Sequential(featurizer, classifier)
