"""Hyperparameters of a run, DomainBed's public names: ``default_hparams``, ``random_hparams``.

The registry composes parts instead of one function keyed by names: the data and backbone part,
the MoE part (only when the backbone has MoE layers: MoE follows the backbone, not the algorithm
name), DomainBed's optimisation part (lr, weight_decay, batch_size with its dataset special cases)
and the algorithm's own ``define_hparams``, declared beside the algorithm. hparams_seed 0 means
defaults; otherwise each hparam is drawn from ``RandomState(seed_hash(random_seed, name))``, so the
same names give the same draws as DomainBed's for the same seeds.
"""

from __future__ import annotations

from ..moe.config import AUX_LOSSES, HPARAM_FIELDS, ROUTERS, MoEConfig
from ..seeding import seed_hash
from .space import SMALL_IMAGES, HParamSpace

__all__ = ["default_hparams", "random_hparams", "resolve_hparams", "hparam_space", "MOE_HPARAMS",
           "SMALL_IMAGES"]

MOE_HPARAMS = (*HPARAM_FIELDS, "aux_loss_weight")


def _data_and_backbone(space: HParamSpace, backbone: str) -> None:
    space.add("data_augmentation", True, kind=bool)
    space.add("class_balanced", False, kind=bool)
    space.add("nonlinear_classifier", False, lambda r: bool(r.choice([False, False])), kind=bool)
    # any timm model name; models with MoE layers (gmoe_*) add the MoE hparams
    space.add("backbone", backbone, kind=str)
    # extra timm constructor arguments, e.g. {"depth": 4}
    space.add("backbone_kwargs", {}, kind=dict)
    space.add("pretrained", not space.small_images, kind=bool)
    space.add("pretrained_file", "", kind=str)
    space.add("image_size", 224, kind=int, low=8)
    space.add("drop_path_rate", 0.0 if space.small_images else 0.1, low=0.0, high=1.0)
    space.add("dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), low=0.0, high=1.0)


def _moe(space: HParamSpace) -> None:
    """The sparse MoE layers' settings (defaults: MoEConfig's, the paper's) and the balance loss weight."""
    config = MoEConfig()
    space.add("num_experts", config.num_experts, low=1)
    space.add("top_k", config.top_k, low=1)
    space.add("router", config.router, choices=ROUTERS)
    space.add("capacity_factor", config.capacity_factor, nullable=True, low=0.0)
    space.add("gate_noise", config.gate_noise, low=0.0)
    space.add("expert_dropout", 0.0 if space.small_images else 0.1, low=0.0, high=1.0)
    space.add("moe_blocks", config.blocks, kind=(str, list))
    space.add("aux_loss_weight", 0.01, lambda r: float(10 ** r.uniform(-3, -1)), low=0.0)
    assert config.aux_loss in AUX_LOSSES


def _optimisation(space: HParamSpace) -> None:
    """DomainBed's lr / weight_decay / batch_size (algorithms replace them for their special cases)."""
    if space.small_images:
        space.add("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), low=0.0)
        space.add("weight_decay", 0.0, lambda r: 0.0, low=0.0)
        space.add("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)), low=1)
    else:
        space.add("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), low=0.0)
        space.add("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2), low=0.0)
        if space.dataset == "DomainNet":
            space.add("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5)), low=1)
        else:
            space.add("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)), low=1)


def hparam_space(algorithm: str, dataset: str, backbone: str | None = None) -> HParamSpace:
    """Every hparam of ``algorithm`` on ``dataset``; ``backbone`` overrides the algorithm's default
    backbone (it decides whether the MoE hparams exist)."""
    from ..algorithms import canonical_name, get_algorithm_class
    from ..models.backbones import is_moe_backbone

    algorithm_class = get_algorithm_class(algorithm)
    space = HParamSpace(canonical_name(algorithm), dataset)
    default_backbone = algorithm_class.default_backbone(space.small_images)
    space.backbone = backbone or default_backbone
    _data_and_backbone(space, default_backbone)
    if is_moe_backbone(space.backbone):
        _moe(space)
    _optimisation(space)
    algorithm_class.define_hparams(space)
    return space


def default_hparams(algorithm: str, dataset: str) -> dict:
    return hparam_space(algorithm, dataset).defaults()


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict:
    return hparam_space(algorithm, dataset).draws(seed)


def resolve_hparams(algorithm: str, dataset: str, hparams_seed: int, trial_seed: int,
                    overrides: dict | None = None) -> dict:
    """The hparams of one run: defaults (seed 0) or a random draw, then the user's overrides.

    Unknown names, MoE hparams for a dense backbone and values of the wrong type or range are
    errors (ValueError, one line) rather than silently ignored: a typo would cost a whole sweep."""
    overrides = dict(overrides or {})
    space = hparam_space(algorithm, dataset, overrides.get("backbone"))
    hparams = space.defaults() if hparams_seed == 0 else space.draws(seed_hash(hparams_seed, trial_seed))
    unknown = sorted(set(overrides) - set(hparams))
    moe_for_dense = [name for name in unknown if name in MOE_HPARAMS]
    if moe_for_dense:
        raise ValueError(f"{', '.join(moe_for_dense)}: MoE hparam(s), but backbone '{space.backbone}' has no MoE "
                         "layers; choose a GMoE backbone, e.g. --hparams '{\"backbone\": \"gmoe_micro_patch4_32\"}'")
    if unknown:
        raise ValueError(f"unknown hparam(s) {', '.join(unknown)} for {space.algorithm} on {dataset}; "
                         f"known: {', '.join(sorted(hparams))}")
    for name, value in overrides.items():
        problem = space.specs[name].check(value)
        if problem:
            raise ValueError(f"--hparams: {problem}")
    hparams.update(overrides)
    return hparams
