"""HParamSpace: the hyperparameters of one run, each a default and a seeded random draw.

DomainBed's scheme: the random value of hparam ``name`` comes from
``RandomState(seed_hash(random_seed, name))``, so adding, removing or reordering hparams never
shifts the others' draws. Each part of a run declares its own hparams into one space: the
data/backbone part, the MoE part (when the backbone has MoE layers), the optimisation part and
the algorithm's ``define_hparams``. A part may ``replace`` an earlier definition (ARM's batch size,
SF-MoE's per-dataset learning rates), as DomainBed's dataset-and-algorithm special cases do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..seeding import seed_hash

# DomainBed's SMALL_IMAGES, plus the embedded digit datasets that follow its MNIST rules.
SMALL_IMAGES = ("Debug28", "RotatedMNIST", "ColoredMNIST", "RotatedDigits", "ColoredDigits")

Draw = Callable[[np.random.RandomState], Any]


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, its random-search distribution and what values it accepts.

    ``kind`` is the accepted Python type (inferred from the default: an int hparam takes ints, a
    float one ints or floats); ``low``/``high`` bound numbers; ``choices`` lists allowed values;
    ``nullable`` admits None (e.g. dropless ``capacity_factor``); ``seed_name`` draws the value from
    another name's seed (an hparam that stands for a DomainBed one of another name draws what
    DomainBed would).
    """

    name: str
    default: Any
    draw: Draw
    kind: type | tuple[type, ...] | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    seed_name: str | None = None

    def accepted_kind(self) -> tuple[type, ...]:
        if self.kind is not None:
            return self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if isinstance(self.default, bool):
            return (bool,)
        if isinstance(self.default, int):
            return (int,)
        if isinstance(self.default, float):
            return (int, float)
        return (type(self.default),)

    def check(self, value) -> str | None:
        """Why ``value`` is not acceptable (one line), or None if it is."""
        if value is None:
            return None if self.nullable or self.default is None else f"{self.name} cannot be null"
        kinds = self.accepted_kind()
        if isinstance(value, bool) and bool not in kinds:
            return f"{self.name} must be {_kind_names(kinds)}, got {value!r}"
        if not isinstance(value, kinds):
            return f"{self.name} must be {_kind_names(kinds)}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
        if self.low is not None and value < self.low:
            return f"{self.name} must be >= {self.low}, got {value!r}"
        if self.high is not None and value > self.high:
            return f"{self.name} must be <= {self.high}, got {value!r}"
        return None


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a JSON object"}
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


class HParamSpace:
    """The hparams of one (algorithm, dataset, backbone), declared part by part."""

    def __init__(self, algorithm: str, dataset: str, backbone: str | None = None):
        self.algorithm = algorithm
        self.dataset = dataset
        self.backbone = backbone
        self.features = "pooled"  # the featurizer's output ("dinov2_linear": DomainBed's DINOv2)
        self.small_images = dataset in SMALL_IMAGES
        self.specs: dict[str, HParam] = {}

    def add(self, name: str, default, draw: Draw | None = None, *, replace: bool = False, **rules) -> None:
        """Declare ``name``; ``draw`` defaults to always drawing the default. ``replace`` redefines an
        hparam an earlier part declared (a special case); otherwise a name may be declared once."""
        if name in self.specs and not replace:
            raise ValueError(f"hparam '{name}' is declared twice")
        if replace and name not in self.specs:
            raise ValueError(f"hparam '{name}' replaces nothing")
        if replace and "seed_name" not in rules and self.specs[name].seed_name:
            # a special case keeps the seed it replaces: its draws stay DomainBed's for the same seeds
            rules["seed_name"] = self.specs[name].seed_name
        self.specs[name] = HParam(name, default, draw or (lambda r, value=default: value), **rules)

    def declare(self, spec: HParam) -> None:
        """Declare a ready-made ``HParam`` (e.g. one of ``moe.config.SETTINGS``)."""
        if spec.name in self.specs:
            raise ValueError(f"hparam '{spec.name}' is declared twice")
        self.specs[spec.name] = spec

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def defaults(self) -> dict:
        return {name: spec.default for name, spec in self.specs.items()}

    def draws(self, random_seed: int) -> dict:
        """Every hparam drawn from its own ``RandomState(seed_hash(random_seed, name))``."""
        return {name: _plain(spec.draw(np.random.RandomState(seed_hash(random_seed, spec.seed_name or name))))
                for name, spec in self.specs.items()}


def _plain(value):
    """NumPy scalars (from ``r.choice``) as Python values, so records stay plain JSON."""
    return value.item() if isinstance(value, np.generic) else value


def parse_hparams_json(text: str | None) -> dict:
    """``--hparams`` as a dict ({} for None), or a one-line ValueError with an example (the one
    parser every command uses)."""
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--hparams is not valid JSON ({error.msg} at character {error.pos}); "
                         "example: --hparams '{\"lr\": 1e-4}'") from None
    if not isinstance(parsed, dict):
        raise ValueError("--hparams must be a JSON object, e.g. '{\"lr\": 1e-4}'")
    return parsed
