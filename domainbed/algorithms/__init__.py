"""Algorithms by name (DomainBed's ``get_algorithm_class``), from an explicit registry.

To add a method: write ``algorithms/<name>.py`` with a subclass of ``Algorithm`` (or ``ERM``),
declare its hparams in ``define_hparams`` and list it in ``ALGORITHMS`` below. Aliases resolve to
one canonical name before anything is hashed or recorded, so a method is one row in the tables.
"""

from __future__ import annotations

from .averaging import SMA, SWAD
from .base import Algorithm, Checkpoint, RunInfo, Validation
from .distribution_matching import CORAL, MMD, CausIRL_CORAL, CausIRL_MMD
from .erm import ERM
from .fish import Fish
from .sfmoe import SFMOE

ALGORITHMS: dict[str, type[Algorithm]] = {
    "ERM": ERM,
    "Fish": Fish,
    "MMD": MMD,
    "CORAL": CORAL,
    "CausIRL_CORAL": CausIRL_CORAL,
    "CausIRL_MMD": CausIRL_MMD,
    "SWAD": SWAD,
    "SMA": SMA,
    "SFMOE": SFMOE,
}

# other names users write -> the canonical name
ALIASES = {"GMOE": "SFMOE", "GMoE": "SFMOE", "SF-MoE": "SFMOE"}


def canonical_name(name: str) -> str:
    """The registry's name for ``name`` (an alias resolves; unknown names are returned as given)."""
    return ALIASES.get(name, name)


def get_algorithm_class(name: str) -> type[Algorithm]:
    name = canonical_name(name)
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; known algorithms: {', '.join(ALGORITHMS)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "ALIASES", "Algorithm", "Checkpoint", "RunInfo", "Validation", "ERM", "SFMOE",
           "canonical_name", "get_algorithm_class"]
