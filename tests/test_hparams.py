"""Hyperparameters: DomainBed's names, defaults and per-name seeded draws; parts composed by backbone."""

import hashlib

import numpy as np
import pytest

from domainbed import hparams_registry
from domainbed.seeding import seed_hash


def test_seed_hash_is_md5_of_str_args():
    expected = int(hashlib.md5(str((3, "lr")).encode()).hexdigest(), 16) % 2**31
    assert seed_hash(3, "lr") == expected
    assert seed_hash(0, 1) != seed_hash(1, 0)


def domainbed_draw(seed: int, name: str, draw):
    """DomainBed's rule, written out: hparam ``name`` comes from RandomState(seed_hash(seed, name))."""
    return draw(np.random.RandomState(int(hashlib.md5(str((seed, name)).encode()).hexdigest(), 16) % 2**31))


# (dataset, algorithm, hparam, DomainBed's distribution for it)
DOMAINBED_DRAWS = [
    ("PACS", "ERM", "lr", lambda r: 10 ** r.uniform(-5, -3.5)),
    ("PACS", "ERM", "weight_decay", lambda r: 10 ** r.uniform(-6, -2)),
    ("PACS", "ERM", "batch_size", lambda r: int(2 ** r.uniform(3, 5.5))),
    ("DomainNet", "ERM", "batch_size", lambda r: int(2 ** r.uniform(3, 5))),
    ("RotatedMNIST", "ERM", "lr", lambda r: 10 ** r.uniform(-4.5, -2.5)),
    ("RotatedMNIST", "ERM", "batch_size", lambda r: int(2 ** r.uniform(3, 9))),
    ("RotatedDigits", "ERM", "batch_size", lambda r: int(2 ** r.uniform(3, 9))),
    ("PACS", "Fish", "meta_lr", lambda r: r.choice([0.05, 0.1, 0.5])),
    ("PACS", "CORAL", "mmd_gamma", lambda r: 10 ** r.uniform(-1, 1)),
    ("PACS", "ERM", "nonlinear_classifier", lambda r: bool(r.choice([False, False]))),
]


@pytest.mark.parametrize("dataset, algorithm, name, draw", DOMAINBED_DRAWS)
@pytest.mark.parametrize("seed", [1, 7, 123456])
def test_random_draws_equal_domainbeds_for_the_same_seed(dataset, algorithm, name, draw, seed):
    assert hparams_registry.random_hparams(algorithm, dataset, seed)[name] == domainbed_draw(seed, name, draw)


def test_defaults_follow_domainbed_and_the_seed_readme():
    assert hparams_registry.default_hparams("ERM", "PACS")["lr"] == 5e-5
    assert hparams_registry.default_hparams("ERM", "RotatedMNIST")["batch_size"] == 64
    assert hparams_registry.default_hparams("ERM", "PACS")["backbone"] == "resnet50"
    hp = hparams_registry.default_hparams("SFMOE", "VLCS")
    assert (hp["lr"], hp["dropout"], hp["weight_decay"]) == (1e-5, 0.5, 1e-6)
    assert hp["backbone"] == "gmoe_small_patch16_224"
    assert (hp["num_experts"], hp["top_k"], hp["router"], hp["capacity_factor"]) == (6, 1, "cosine", 1.5)
    assert hparams_registry.default_hparams("GMOE", "VLCS") == hp


def test_moe_hparams_follow_the_backbone_not_the_algorithm_name():
    assert "num_experts" not in hparams_registry.default_hparams("Fish", "PACS")
    on_gmoe = hparams_registry.resolve_hparams("Fish", "PACS", 0, 0, {"backbone": "gmoe_small_patch16_224"})
    assert on_gmoe["num_experts"] == 6 and on_gmoe["aux_loss_weight"] == 0.01 and on_gmoe["meta_lr"] == 0.5
    with pytest.raises(ValueError, match="top_k: MoE hparam.*no MoE layers"):
        hparams_registry.resolve_hparams("ERM", "PACS", 0, 0, {"top_k": 2})
    with pytest.raises(ValueError, match="no MoE layers"):
        hparams_registry.resolve_hparams("SFMOE", "PACS", 0, 0, {"backbone": "resnet50", "num_experts": 4})


def test_resolve_uses_defaults_for_seed_zero_and_rejects_unknown_names_and_bad_values():
    assert hparams_registry.resolve_hparams("ERM", "PACS", 0, 0) == hparams_registry.default_hparams("ERM", "PACS")
    drawn = hparams_registry.resolve_hparams("ERM", "PACS", 3, 1)
    assert drawn == hparams_registry.random_hparams("ERM", "PACS", seed_hash(3, 1))
    assert hparams_registry.resolve_hparams("ERM", "PACS", 0, 0, {"lr": 0.1})["lr"] == 0.1
    with pytest.raises(ValueError, match="unknown hparam.*lrr"):
        hparams_registry.resolve_hparams("ERM", "PACS", 0, 0, {"lrr": 0.1})
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        hparams_registry.resolve_hparams("ERM", "PACS", 0, 0, {"lr": "fast"})
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        hparams_registry.resolve_hparams("ERM", "PACS", 0, 0, {"batch_size": 0})
    with pytest.raises(ValueError, match="batch_size must be an integer, got 8.5"):
        hparams_registry.resolve_hparams("ERM", "PACS", 0, 0, {"batch_size": 8.5})
    assert hparams_registry.resolve_hparams("SFMOE", "PACS", 0, 0, {"capacity_factor": None})["capacity_factor"] is None
