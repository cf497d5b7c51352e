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


# Every hparam checked against DomainBed's registry (domainbed/hparams_registry.py), one row each:
# (dataset, algorithm, hparam, DomainBed's default, DomainBed's distribution for it).
# Deliberate differences are marked; MIRO's rows follow the MIRO authors' code. SANDMask, Transfer,
# URM and EQRM are checked whole, block by block, in DOMAINBED_BLOCKS below.
DOMAINBED_HPARAMS = [
    # the optimisation part and its dataset special cases
    ("PACS", "ERM", "lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5)),
    ("PACS", "ERM", "weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2)),
    ("PACS", "ERM", "batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5))),
    ("PACS", "ERM", "nonlinear_classifier", False, lambda r: bool(r.choice([False, False]))),
    ("PACS", "ERM", "data_augmentation", True, lambda r: True),
    ("PACS", "ERM", "class_balanced", False, lambda r: False),
    ("DomainNet", "ERM", "batch_size", 32, lambda r: int(2 ** r.uniform(3, 5))),
    ("RotatedMNIST", "ERM", "lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5)),
    ("RotatedMNIST", "ERM", "batch_size", 64, lambda r: int(2 ** r.uniform(3, 9))),
    ("RotatedDigits", "ERM", "batch_size", 64, lambda r: int(2 ** r.uniform(3, 9))),  # ours: small images
    ("PACS", "ARM", "batch_size", 8, lambda r: 8),
    ("DomainNet", "ARM", "batch_size", 8, lambda r: 8),
    ("RotatedMNIST", "ARM", "batch_size", 64, lambda r: int(2 ** r.uniform(3, 9))),
    ("PACS", "Fish", "meta_lr", 0.5, lambda r: r.choice([0.05, 0.1, 0.5])),
    ("PACS", "CORAL", "mmd_gamma", 1.0, lambda r: 10 ** r.uniform(-1, 1)),
    ("PACS", "MMD", "mmd_gamma", 1.0, lambda r: 10 ** r.uniform(-1, 1)),
    ("PACS", "CausIRL_CORAL", "mmd_gamma", 1.0, lambda r: 10 ** r.uniform(-1, 1)),
    ("PACS", "Mixup", "mixup_alpha", 0.2, lambda r: 10 ** r.uniform(-1, 1)),
    ("PACS", "SagNet", "sag_w_adv", 0.1, lambda r: 10 ** r.uniform(-2, 1)),
    ("PACS", "CAD", "lmbda", 1e-1, lambda r: r.choice([1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2])),
    ("PACS", "CAD", "temperature", 0.1, lambda r: r.choice([0.05, 0.1])),
    ("PACS", "CondCAD", "is_flipped", True, lambda r: True),
    ("PACS", "MTL", "mtl_ema", 0.99, lambda r: r.choice([0.5, 0.9, 0.99, 1.0])),
    # invariance and risks
    ("PACS", "IRM", "irm_lambda", 1e2, lambda r: 10 ** r.uniform(-1, 5)),
    ("PACS", "IRM", "irm_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4))),
    ("PACS", "IB_ERM", "ib_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4))),
    ("PACS", "IB_IRM", "irm_lambda", 1e2, lambda r: 10 ** r.uniform(-1, 5)),
    ("PACS", "IB_IRM", "irm_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4))),
    ("PACS", "IB_IRM", "ib_lambda", 1e2, lambda r: 10 ** r.uniform(-1, 5)),
    ("PACS", "IB_IRM", "ib_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4))),
    ("PACS", "VREx", "vrex_lambda", 1e1, lambda r: 10 ** r.uniform(-1, 5)),
    ("PACS", "VREx", "vrex_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4))),
    ("PACS", "GroupDRO", "groupdro_eta", 1e-2, lambda r: 10 ** r.uniform(-3, -1)),
    ("PACS", "SD", "sd_reg", 0.1, lambda r: 10 ** r.uniform(-5, -1)),
    ("PACS", "RDM", "rdm_lambda", 5.0, lambda r: r.uniform(1.0, 10.0)),
    ("VLCS", "RDM", "rdm_lambda", 5.0, lambda r: r.uniform(0.1, 10.0)),
    ("DomainNet", "RDM", "rdm_lambda", 0.5, lambda r: r.uniform(0.1, 1.0)),
    ("TerraIncognita", "RDM", "rdm_lambda", 5.0, lambda r: r.uniform(1.0, 10.0)),
    ("PACS", "RDM", "rdm_penalty_anneal_iters", 1500, lambda r: int(r.uniform(800, 2700))),
    ("DomainNet", "RDM", "rdm_penalty_anneal_iters", 2400, lambda r: int(r.uniform(1500, 3000))),
    ("PACS", "RDM", "variance_weight", 0.004, lambda r: r.uniform(0.001, 0.007)),
    ("OfficeHome", "RDM", "variance_weight", 0.0, lambda r: 0.0),
    ("TerraIncognita", "RDM", "variance_weight", 0.0, lambda r: 0.0),
    ("DomainNet", "RDM", "variance_weight", 0.0, lambda r: 0.0),
    ("PACS", "RDM", "rdm_lr", 1.5e-5, lambda r: r.uniform(8e-6, 2e-5)),
    ("PACS", "RDM", "batch_size", 88, lambda r: int(r.uniform(70, 100))),
    ("DomainNet", "RDM", "batch_size", 40, lambda r: int(r.uniform(30, 60))),
    ("TerraIncognita", "RDM", "batch_size", 40, lambda r: int(r.uniform(30, 60))),
    ("RotatedMNIST", "RDM", "batch_size", 64, lambda r: int(2 ** r.uniform(3, 9))),
    # gradient methods
    ("PACS", "ANDMask", "tau", 1, lambda r: r.uniform(0.5, 1.0)),
    ("PACS", "IGA", "penalty", 1000, lambda r: 10 ** r.uniform(1, 5)),
    ("PACS", "Fishr", "lambda", 1000.0, lambda r: 10 ** r.uniform(1.0, 4.0)),
    ("PACS", "Fishr", "penalty_anneal_iters", 1500, lambda r: int(r.uniform(0.0, 5000.0))),
    ("PACS", "Fishr", "ema", 0.95, lambda r: r.uniform(0.90, 0.99)),
    ("PACS", "TRM", "cos_lambda", 1e-4, lambda r: 10 ** r.uniform(-5, 0)),
    ("PACS", "TRM", "iters", 200, lambda r: int(10 ** r.uniform(0, 4))),
    ("PACS", "TRM", "groupdro_eta", 1e-2, lambda r: 10 ** r.uniform(-3, -1)),
    ("PACS", "RSC", "rsc_f_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5)),
    ("PACS", "RSC", "rsc_b_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5)),
    ("PACS", "MLDG", "mldg_beta", 1.0, lambda r: 10 ** r.uniform(-1, 1)),
    ("PACS", "MLDG", "n_meta_test", 2, lambda r: r.choice([1, 2])),
    # adversarial
    ("RotatedMNIST", "DANN", "lr_g", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5)),
    ("PACS", "DANN", "lr_g", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5)),
    ("PACS", "DANN", "lr_d", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5)),
    ("RotatedMNIST", "DANN", "mlp_depth", 3, lambda r: int(r.choice([3, 4, 5]))),
    ("PACS", "DANN", "d_steps_per_g_step", 1, lambda r: int(2 ** r.uniform(0, 3))),
    ("RotatedMNIST", "DANN", "weight_decay_g", 0.0, lambda r: 0.0),
    ("PACS", "DANN", "weight_decay_g", 0.0, lambda r: 10 ** r.uniform(-6, -2)),
    ("PACS", "DANN", "weight_decay_d", 0.0, lambda r: 10 ** r.uniform(-6, -2)),
    ("PACS", "DANN", "grad_penalty", 0.0, lambda r: 10 ** r.uniform(-2, 1)),
    ("PACS", "DANN", "beta1", 0.5, lambda r: r.choice([0.0, 0.5])),
    ("PACS", "DANN", "mlp_width", 256, lambda r: int(2 ** r.uniform(6, 10))),
    ("PACS", "DANN", "mlp_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5])),
    ("PACS", "CDANN", "lambda", 1.0, lambda r: 10 ** r.uniform(-2, 2)),
    # ADRMX replaces the common lr
    ("RotatedMNIST", "ADRMX", "lr", 3e-3, lambda r: r.choice([5e-4, 1e-3, 2e-3, 3e-3])),
    ("PACS", "ADRMX", "lr", 3e-5, lambda r: r.choice([2e-5, 3e-5, 4e-5, 5e-5])),
    ("PACS", "ADRMX", "mlp_depth", 9, lambda r: int(r.choice([8, 9, 10]))),
    ("PACS", "ADRMX", "d_steps_per_g_step", 2, lambda r: r.choice([2])),
    # pretrained-backbone methods
    ("PACS", "ERMPlusPlus", "linear_lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5)),
    ("PACS", "ERMPlusPlus", "linear_steps", 500, lambda r: 500),
    ("PACS", "ERMPlusPlus", "lars", False, lambda r: False),
    ("PACS", "ERMPlusPlus", "freeze_bn", False, lambda r: False),
    ("PACS", "MIRO", "ld", 0.1, lambda r: r.choice([1.0, 0.1, 0.01, 0.001])),
    ("PACS", "MIRO", "lr_mult", 10.0, lambda r: 10.0),
]


@pytest.mark.parametrize("dataset, algorithm, name, default, draw", DOMAINBED_HPARAMS,
                         ids=[f"{d}-{a}-{n}" for d, a, n, _, _ in DOMAINBED_HPARAMS])
def test_defaults_and_draws_equal_domainbeds(dataset, algorithm, name, default, draw):
    value = hparams_registry.default_hparams(algorithm, dataset)[name]
    assert value == default and isinstance(value, bool) == isinstance(default, bool)
    for seed in (1, 7, 123456):
        drawn, expected = hparams_registry.random_hparams(algorithm, dataset, seed)[name], domainbed_draw(seed, name, draw)
        assert drawn == expected and isinstance(drawn, bool) == isinstance(expected, bool), seed


DOMAINBED_SMALL_IMAGES = ("Debug28", "RotatedMNIST", "ColoredMNIST")


def domainbed_block(algorithm: str, dataset: str) -> dict:
    """DomainBed's hparams_registry.py block for ``algorithm`` written out, every key of it:
    {name: (default, draw)}."""
    if algorithm == "SANDMask":
        return {"tau": (1.0, lambda r: r.uniform(0.0, 1.0)),
                "k": (1e1, lambda r: 10 ** r.uniform(-3, 5))}
    if algorithm == "Transfer":
        return {"t_lambda": (1.0, lambda r: 10 ** r.uniform(-2, 1)),
                "delta": (2.0, lambda r: r.uniform(0.1, 3.0)),
                "d_steps_per_g": (10, lambda r: int(r.choice([1, 2, 5]))),
                "weight_decay_d": (0.0, lambda r: 10 ** r.uniform(-6, -2)),
                "gda": (False, lambda r: True),
                "beta1": (0.5, lambda r: r.choice([0.0, 0.5])),
                "lr_d": (1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5))}
    if algorithm == "EQRM":
        return {"eqrm_quantile": (0.75, lambda r: r.uniform(0.5, 0.99)),
                "eqrm_burnin_iters": (2500, lambda r: 10 ** r.uniform(2.5, 3.5)),
                "eqrm_lr": (1e-6, lambda r: 10 ** r.uniform(-7, -5))}
    if algorithm == "URM":
        block = {"urm": ("adversarial", lambda r: str(r.choice(["adversarial"]))),
                 "urm_adv_lambda": (0.1, lambda r: float(r.uniform(0, 0.2))),
                 "urm_discriminator_label_smoothing": (0, lambda r: float(r.uniform(0, 0))),
                 "urm_discriminator_optimizer": ("adam", lambda r: str(r.choice(["adam"]))),
                 "urm_discriminator_hidden_layers": (1, lambda r: int(r.choice([1, 2, 3]))),
                 "urm_generator_output": ("tanh", lambda r: str(r.choice(["tanh", "relu"])))}
        if dataset in DOMAINBED_SMALL_IMAGES:
            block["urm_discriminator_lr"] = (1e-3, lambda r: 10 ** r.uniform(-5.5, -3.5))
        else:
            block["urm_discriminator_lr"] = (5e-5, lambda r: 10 ** r.uniform(-6, -4.5))
        return block
    raise KeyError(algorithm)


# Our deliberate differences from those blocks: (algorithm, hparam) -> our default.
KEPT_DEFAULTS = {
    ("SANDMask", "tau"): 0.5,  # DomainBed's 1.0 zeroes SAND-mask's mask: no training (see SANDMask)
}
DOMAINBED_BLOCKS = [(algorithm, dataset, name)
                    for algorithm in ("SANDMask", "Transfer", "URM", "EQRM")
                    for dataset in ("PACS", "RotatedMNIST")
                    for name in domainbed_block(algorithm, dataset)]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.parametrize("algorithm, dataset", sorted({(a, d) for a, d, _ in DOMAINBED_BLOCKS}))
def test_algorithm_blocks_have_domainbeds_keys(algorithm, dataset):
    ours = set(hparams_registry.default_hparams(algorithm, dataset)) - set(hparams_registry.default_hparams("ERM", dataset))
    assert ours == set(domainbed_block(algorithm, dataset))


@pytest.mark.parametrize("algorithm, dataset, name", DOMAINBED_BLOCKS, ids=["-".join(row) for row in DOMAINBED_BLOCKS])
def test_algorithm_blocks_have_domainbeds_defaults_draws_and_types(algorithm, dataset, name):
    default, draw = domainbed_block(algorithm, dataset)[name]
    default = KEPT_DEFAULTS.get((algorithm, name), default)
    value = hparams_registry.default_hparams(algorithm, dataset)[name]
    assert value == default and type(value) is type(default)
    for seed in (1, 7, 123456):
        drawn = hparams_registry.random_hparams(algorithm, dataset, seed)[name]
        expected = _plain(domainbed_draw(seed, name, draw))
        assert drawn == expected and type(drawn) is type(expected), seed


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
