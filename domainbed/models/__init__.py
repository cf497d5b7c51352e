"""Backbones for DomainBed algorithms; importing this registers the GMoE models with timm."""

from . import gmoe  # noqa: F401  (timm registrations: gmoe_*, vit_micro_patch4_32)
from .backbones import (PretrainedWeightsError, build_classifier, build_featurizer, build_network,
                        is_moe_backbone)

__all__ = ["build_network", "build_featurizer", "build_classifier", "is_moe_backbone", "PretrainedWeightsError"]
