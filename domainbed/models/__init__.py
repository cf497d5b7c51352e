"""Backbones for DomainBed algorithms; importing this registers the GMoE models with timm."""

from . import gmoe  # noqa: F401  (timm registrations: gmoe_*, vit_micro_patch4_32)
from .backbones import PretrainedWeightsError, build_network, moe_kwargs

__all__ = ["build_network", "moe_kwargs", "PretrainedWeightsError"]
