"""Algorithms by name (DomainBed's ``get_algorithm_class``), from a registry rather than globals()."""

from __future__ import annotations

from .base import Algorithm
from .erm import ERM
from .sfmoe import SFMOE

ALGORITHMS: dict[str, type[Algorithm]] = {
    "ERM": ERM,
    "SFMOE": SFMOE,
    "GMOE": SFMOE,  # the paper's name for the same method
}


def get_algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; known algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "Algorithm", "ERM", "SFMOE", "get_algorithm_class"]
