"""Algorithms by name (DomainBed's ``get_algorithm_class``), from an explicit registry.

``ALGORITHMS`` lists every method in DomainBed's order (then ours); ``LOCATIONS`` says which
module of this package defines each, imported on first use. To add a method: write
``algorithms/<family>.py`` with a subclass of ``Algorithm`` (or ``ERM``), declare its hparams in
``define_hparams`` and add one line here. Aliases resolve to one canonical name before anything is
hashed or recorded, so a method is one row in the tables. The names are known without importing
torch (``collect_results`` orders its rows by them); classes import on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Algorithm

# name -> module (in this package) that defines the class of that name
LOCATIONS: dict[str, str] = {
    "ERM": "erm",
    "ERMPlusPlus": "erm_plus_plus",
    "Fish": "fish",
    "IRM": "invariance",
    "GroupDRO": "group_dro",
    "Mixup": "mixup",
    "MLDG": "mldg",
    "CORAL": "distribution_matching",
    "MMD": "distribution_matching",
    "DANN": "adversarial",
    "CDANN": "adversarial",
    "MTL": "mtl",
    "SagNet": "sagnet",
    "ARM": "arm",
    "VREx": "risk_distribution",
    "RSC": "rsc",
    "SD": "spectral_decoupling",
    "ANDMask": "gradient_agreement",
    "SANDMask": "gradient_agreement",
    "IGA": "gradient_agreement",
    "SelfReg": "contrastive",
    "Fishr": "fishr",
    "TRM": "trm",
    "IB_ERM": "invariance",
    "IB_IRM": "invariance",
    "CAD": "contrastive",
    "CondCAD": "contrastive",
    "Transfer": "transfer",
    "CausIRL_CORAL": "distribution_matching",
    "CausIRL_MMD": "distribution_matching",
    "EQRM": "risk_distribution",
    "RDM": "risk_distribution",
    "ADRMX": "adrmx",
    "URM": "urm",
    # beyond DomainBed
    "SWAD": "averaging",
    "SMA": "averaging",
    "MIRO": "miro",
    "SFMOE": "sfmoe",
}
ALGORITHMS: tuple[str, ...] = tuple(LOCATIONS)

# other names users write -> the canonical name
ALIASES = {"GMOE": "SFMOE", "GMoE": "SFMOE", "SF-MoE": "SFMOE"}


def canonical_name(name: str) -> str:
    """The registry's name for ``name`` (an alias resolves; unknown names are returned as given)."""
    return ALIASES.get(name, name)


def get_algorithm_class(name: str) -> type[Algorithm]:
    name = canonical_name(name)
    if name not in LOCATIONS:
        raise ValueError(f"unknown algorithm '{name}'; known algorithms: {', '.join(ALGORITHMS)} "
                         f"(aliases: {', '.join(ALIASES)})")
    module = importlib.import_module(f"{__name__}.{LOCATIONS[name]}")
    return getattr(module, name)


_CONTRACT = ("Algorithm", "Checkpoint", "RunInfo", "Validation")


def __getattr__(name: str):
    """``from domainbed.algorithms import ERM`` (DomainBed's spelling) and the contract's names
    (``Algorithm``, ``RunInfo``...) import on use."""
    if name in LOCATIONS:
        return get_algorithm_class(name)
    if name in _CONTRACT:
        return getattr(importlib.import_module(f"{__name__}.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALGORITHMS", "ALIASES", "LOCATIONS", "Algorithm", "Checkpoint", "RunInfo", "Validation",
           "canonical_name", "get_algorithm_class", *ALGORITHMS]
