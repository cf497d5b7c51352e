"""Hyperparameters: a default and a random-search distribution for each, per algorithm and dataset.

DomainBed's scheme: hparams_seed 0 means defaults; otherwise each hparam is drawn from
``RandomState(seed_hash(random_seed, name))`` so adding an hparam never shifts the others.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .seeding import seed_hash

DIGIT_DATASETS = ("Debug28", "RotatedDigits", "ColoredDigits", "RotatedMNIST", "ColoredMNIST")

# The seed README's per-dataset SF-MoE settings: (learning rate, dropout, weight decay).
SFMOE_DATASET_DEFAULTS = {
    "PACS": (3e-5, 0.0, 0.0),
    "VLCS": (1e-5, 0.5, 1e-6),
    "OfficeHome": (3e-5, 0.1, 1e-6),
    "TerraIncognita": (3e-5, 0.0, 1e-4),
    "DomainNet": (3e-5, 0.1, 0.0),
}

MOE_ALGORITHMS = ("SFMOE", "GMOE")


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict[str, tuple]:
    """name -> (default, random draw) for one algorithm on one dataset."""
    small = dataset in DIGIT_DATASETS
    moe = algorithm in MOE_ALGORITHMS
    table: dict[str, tuple] = {}

    def add(name: str, default, draw: Callable[[np.random.RandomState], object]) -> None:
        assert name not in table, name
        rng = np.random.RandomState(seed_hash(random_seed, name))
        table[name] = (default, draw(rng))

    # Backbone: any timm model name; "gmoe_*" models are sparse MoE ViTs.
    if small:
        backbone = "gmoe_micro_patch4_32" if moe else "vit_micro_patch4_32"
    else:
        backbone = "gmoe_small_patch16_224" if moe else "resnet50"
    add("backbone", backbone, lambda r: backbone)
    # Extra timm constructor arguments, e.g. {"depth": 4}; also how foreign checkpoints are rebuilt.
    add("backbone_kwargs", {}, lambda r: {})
    add("pretrained", not small, lambda r: not small)
    add("pretrained_file", "", lambda r: "")
    add("data_augmentation", True, lambda r: True)
    add("image_size", 224, lambda r: 224)
    add("drop_path_rate", 0.0 if small else 0.1, lambda r: 0.0 if small else 0.1)

    if moe and dataset in SFMOE_DATASET_DEFAULTS:
        lr, dropout, weight_decay = SFMOE_DATASET_DEFAULTS[dataset]
    elif small:
        lr, dropout, weight_decay = 1e-3, 0.0, 0.0
    else:
        lr, dropout, weight_decay = (3e-5 if moe else 5e-5), 0.0, 0.0
    if small:
        add("lr", lr, lambda r: 10 ** r.uniform(-4.0, -2.5))
        add("batch_size", 64, lambda r: int(2 ** r.uniform(5, 7)))
    elif moe:
        add("lr", lr, lambda r: 10 ** r.uniform(-5.3, -4.2))
        add("batch_size", 32, lambda r: int(2 ** r.uniform(4, 5.5)))
    else:
        add("lr", lr, lambda r: 10 ** r.uniform(-5, -3.5))
        add("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)))
    add("dropout", dropout, lambda r: float(r.choice([0.0, 0.1, 0.5])))
    add("weight_decay", weight_decay, lambda r: 0.0 if small else float(10 ** r.uniform(-6, -2)))

    if moe:
        add("num_experts", 6, lambda r: 6)
        add("top_k", 1, lambda r: 1)
        add("router", "cosine", lambda r: "cosine")
        add("capacity_factor", 1.5, lambda r: 1.5)
        add("gate_noise", 1.0, lambda r: 1.0)
        add("expert_dropout", 0.1 if not small else 0.0, lambda r: 0.1 if not small else 0.0)
        add("moe_blocks", "last2", lambda r: "last2")
        add("aux_loss_weight", 0.01, lambda r: float(10 ** r.uniform(-3, -1)))
    return table


def default_hparams(algorithm: str, dataset: str) -> dict:
    return {name: default for name, (default, _) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict:
    return {name: draw for name, (_, draw) in _hparams(algorithm, dataset, seed).items()}


def resolve_hparams(algorithm: str, dataset: str, hparams_seed: int, trial_seed: int,
                    overrides: dict | None = None) -> dict:
    """The hparams of one run: defaults (seed 0) or a random draw, then user overrides.

    Unknown override names are an error rather than silently ignored (a typo would otherwise cost a
    whole sweep)."""
    if hparams_seed == 0:
        hparams = default_hparams(algorithm, dataset)
    else:
        hparams = random_hparams(algorithm, dataset, seed_hash(hparams_seed, trial_seed))
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(hparams))
    if unknown:
        raise ValueError(f"unknown hparam(s) {', '.join(unknown)} for {algorithm} on {dataset}; "
                         f"known: {', '.join(sorted(hparams))}")
    hparams.update(overrides)
    return hparams
