"""Hyperparameters of a run, DomainBed's public names: ``default_hparams``, ``random_hparams``.

The registry composes parts instead of one function keyed by names: the data and backbone part,
the MoE part (only when the backbone has MoE layers: MoE follows the backbone, not the algorithm
name), DomainBed's optimisation part (lr, weight_decay, batch_size with its dataset special cases)
and the algorithm's own ``define_hparams``, declared beside the algorithm. hparams_seed 0 means
defaults; otherwise each hparam is drawn from ``RandomState(seed_hash(random_seed, name))``, so the
same names give the same draws as DomainBed's for the same seeds.
"""

from __future__ import annotations

import dataclasses

from ..data.catalog import CATALOG
from ..moe.config import HPARAM_NAMES, SETTINGS, MoEConfig
from ..seeding import seed_hash
from .space import SMALL_IMAGES, HParamSpace

__all__ = ["default_hparams", "random_hparams", "resolve_hparams", "hparam_space", "MOE_HPARAMS",
           "SMALL_IMAGES", "DOMAINBED_NAMES", "from_domainbed_names"]

MOE_HPARAMS = HPARAM_NAMES

# What DomainBed's backbone flags build (its networks.py), as timm names: ``resnet18``/``resnet50``
# are torchvision's ImageNet weights (timm's ``tv_in1k``); ``resnet50_augmix`` is timm's
# ``resnet50.ram_in1k`` (the model DomainBed creates); ``vit`` + ``dinov2`` is DINOv2 ViT-B/14 with
# DomainBed's linear-probe features.
DOMAINBED_RESNET18 = "resnet18"
DOMAINBED_RESNET50 = "resnet50"
DOMAINBED_RESNET50_AUGMIX = "resnet50.ram_in1k"
DOMAINBED_DINOV2 = "vit_base_patch14_dinov2.lvd142m"
DINOV2_FEATURES = "dinov2_linear"

# DomainBed's hparam names that are not ours, and what each becomes here (README's table).
DOMAINBED_NAMES = {
    "resnet18": f"true: backbone {DOMAINBED_RESNET18} (torchvision weights)",
    "resnet50_augmix": f"true: backbone {DOMAINBED_RESNET50_AUGMIX}; false: backbone {DOMAINBED_RESNET50}",
    "vit": f"with dinov2: backbone {DOMAINBED_DINOV2}, features {DINOV2_FEATURES}, drop_path_rate 0",
    "dinov2": "only with vit (alone DomainBed ignores it, and so do we)",
    "resnet_dropout": "dropout, on every backbone except DomainBed's DINOv2",
    "vit_dropout": "dropout, on DomainBed's DINOv2 (vit + dinov2)",
    "vit_attn_tune": "train_attention_only, on a ViT (DomainBed ignores it on a ResNet, and so do we)",
}
# DomainBed declares these for every algorithm but only ERMPlusPlus reads them: elsewhere they are
# accepted and dropped, as DomainBed ignores them.
DOMAINBED_ERMPP_NAMES = ("lars", "linear_steps")


def _dropout_seed_name(space: HParamSpace) -> str | None:
    """DomainBed draws the featurizer's dropout as ``resnet_dropout`` (ResNet) or ``vit_dropout``
    (DINOv2); our ``dropout`` draws from the same seed, so a sweep draws what DomainBed draws."""
    from ..models.backbones import backbone_family

    if space.features == DINOV2_FEATURES:
        return "vit_dropout"
    if backbone_family(space.backbone) == "resnet":
        return "resnet_dropout"
    return None


def _data_and_backbone(space: HParamSpace, backbone: str) -> None:
    from ..models.backbones import FEATURES, STOCHASTIC_DEPTH_FAMILIES, backbone_family

    space.add("data_augmentation", True, kind=bool)
    space.add("class_balanced", False, kind=bool)
    space.add("nonlinear_classifier", False, lambda r: bool(r.choice([False, False])), kind=bool)
    # any timm model name; models with MoE layers (gmoe_*) add the MoE hparams
    space.add("backbone", backbone, kind=str)
    # extra timm constructor arguments, e.g. {"depth": 4}
    space.add("backbone_kwargs", {}, kind=dict)
    space.add("pretrained", not space.small_images, kind=bool)
    space.add("pretrained_file", "", kind=str)
    info = CATALOG.get(space.dataset)
    space.add("image_size", info.image_size if info else 224, kind=int, low=8)
    if info is not None and info.shuffled_environments:
        # which images form which environment: the trial's own draw (set from trial_seed when resolved)
        space.add("environment_shuffle_seed", 0, kind=int, low=0)
    # stochastic depth 0.1 on DeiT-style ViTs (the paper's recipe); other families have none by default
    deit_style = backbone_family(space.backbone) in STOCHASTIC_DEPTH_FAMILIES
    space.add("drop_path_rate", 0.1 if deit_style and not space.small_images else 0.0, low=0.0, high=1.0)
    space.add("dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])), low=0.0, high=1.0,
              seed_name=_dropout_seed_name(space))
    # DomainBed's featurizer switches (see models/backbones.py)
    space.add("freeze_bn", False, lambda r: False, kind=bool)
    space.add("features", "pooled", kind=str, choices=FEATURES)
    space.add("train_attention_only", False, kind=bool)


def _check_domainbed_value(name: str, value) -> None:
    if name in ("resnet_dropout", "vit_dropout"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"--hparams: {name} must be a number between 0 and 1, got {value!r}")
    elif not isinstance(value, bool):
        raise ValueError(f"--hparams: {name} must be true or false, got {value!r}")


def from_domainbed_names(algorithm: str, dataset: str, overrides: dict) -> dict:
    """``overrides`` with DomainBed's hparam names (``DOMAINBED_NAMES``) replaced by ours, with
    DomainBed's meaning; a name we cannot honour, or one that contradicts another, is a one-line
    ValueError. Records then show what was trained (``backbone``, ``dropout``...), and the run's
    ``args.hparams`` keeps what was asked."""
    given = {name: overrides[name] for name in DOMAINBED_NAMES if name in overrides}
    out = {name: value for name, value in overrides.items() if name not in given}
    if not given:
        return out
    for name, value in given.items():
        _check_domainbed_value(name, value)

    selected, features = None, None
    if given.get("vit"):
        if not given.get("dinov2"):
            raise ValueError("--hparams: vit without dinov2 builds no model in DomainBed (NotImplementedError); "
                             "use {\"vit\": true, \"dinov2\": true} for DINOv2 ViT-B/14, or name a timm ViT "
                             "as backbone")
        selected, features = DOMAINBED_DINOV2, DINOV2_FEATURES
    elif given.get("resnet18"):
        if given.get("resnet50_augmix"):
            raise ValueError("--hparams: resnet18 and resnet50_augmix are both true; DomainBed would silently "
                             f"train ResNet-50 ({DOMAINBED_RESNET50_AUGMIX}); set resnet50_augmix to false "
                             "for ResNet-18, or drop resnet18")
        selected = DOMAINBED_RESNET18
    elif "resnet50_augmix" in given:
        selected = DOMAINBED_RESNET50_AUGMIX if given["resnet50_augmix"] else DOMAINBED_RESNET50
    if selected is not None:
        if out.get("backbone", selected) != selected:
            flags = ", ".join(name for name in ("resnet18", "resnet50_augmix", "vit") if name in given)
            raise ValueError(f"--hparams: backbone '{out['backbone']}' contradicts DomainBed's {flags} "
                             f"(which select {selected}); give one or the other")
        out["backbone"] = selected
    if features is not None:
        if out.get("features", features) != features:
            raise ValueError(f"--hparams: features '{out['features']}' contradicts DomainBed's vit + dinov2")
        out["features"] = features
        out.setdefault("drop_path_rate", 0.0)  # DomainBed's DINOv2 has no stochastic depth

    dinov2 = out.get("features") == DINOV2_FEATURES
    dropout_name = "vit_dropout" if dinov2 else "resnet_dropout"
    if dropout_name in given:
        value = float(given[dropout_name])
        if "dropout" in out and out["dropout"] != value:
            raise ValueError(f"--hparams: dropout {out['dropout']} contradicts {dropout_name} {value}; give one")
        out["dropout"] = value

    if given.get("vit_attn_tune"):
        from ..algorithms import get_algorithm_class
        from ..models.backbones import backbone_family

        backbone = out.get("backbone") or get_algorithm_class(algorithm).default_backbone(dataset in SMALL_IMAGES)
        if backbone_family(backbone) != "resnet":
            out["train_attention_only"] = True
    return out


def _moe(space: HParamSpace) -> None:
    """The sparse MoE layers' settings and the balance loss weight, as ``moe.config.SETTINGS``
    declares them (defaults: MoEConfig's, the paper's)."""
    for setting in SETTINGS:
        if setting.name == "expert_dropout":  # explicit in a run: the paper's 0.1 on DeiT, none on digit ViTs
            setting = dataclasses.replace(setting, default=0.0 if space.small_images else 0.1)
            setting = dataclasses.replace(setting, draw=lambda r, value=setting.default: value)
        space.declare(setting)


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


def hparam_space(algorithm: str, dataset: str, backbone: str | None = None,
                 features: str | None = None) -> HParamSpace:
    """Every hparam of ``algorithm`` on ``dataset``; ``backbone`` overrides the algorithm's default
    backbone (it decides whether the MoE hparams exist) and, with ``features``, which DomainBed
    name the featurizer's dropout draws as."""
    from ..algorithms import canonical_name, get_algorithm_class
    from ..models.backbones import is_moe_backbone

    algorithm_class = get_algorithm_class(algorithm)
    space = HParamSpace(canonical_name(algorithm), dataset)
    default_backbone = algorithm_class.default_backbone(space.small_images)
    space.backbone = backbone or default_backbone
    space.features = features or "pooled"
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
    """The hparams of one run: defaults (seed 0) or a random draw, then the user's overrides
    (DomainBed's names among them translated by ``from_domainbed_names``).

    Unknown names, MoE hparams for a dense backbone and values of the wrong type or range are
    errors (ValueError, one line) rather than silently ignored: a typo would cost a whole sweep."""
    overrides = from_domainbed_names(algorithm, dataset, dict(overrides or {}))
    features = overrides.get("features") if isinstance(overrides.get("features"), str) else None
    space = hparam_space(algorithm, dataset, overrides.get("backbone"), features)
    hparams = space.defaults() if hparams_seed == 0 else space.draws(seed_hash(hparams_seed, trial_seed))
    if "environment_shuffle_seed" in hparams:
        hparams["environment_shuffle_seed"] = trial_seed
    for name in DOMAINBED_ERMPP_NAMES:  # DomainBed's, read only by ERMPlusPlus: ignored elsewhere
        if name in overrides and name not in hparams:
            del overrides[name]
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
    _check_featurizer_switches(hparams)
    if any(name in hparams for name in HPARAM_NAMES):
        try:
            MoEConfig.from_hparams(hparams)  # settings that are only wrong together (top_k > num_experts)
        except ValueError as error:
            raise ValueError(f"--hparams: {error}") from None
    return hparams


def _check_featurizer_switches(hparams: dict) -> None:
    """Featurizer switches that cannot apply to the chosen backbone stop the run before it starts."""
    from ..models.backbones import backbone_family

    family = backbone_family(hparams["backbone"])
    if hparams.get("features") == DINOV2_FEATURES and family != "vision_transformer":
        raise ValueError(f"--hparams: features '{DINOV2_FEATURES}' needs a timm ViT backbone such as "
                         f"{DOMAINBED_DINOV2}, got '{hparams['backbone']}'")
    if hparams.get("train_attention_only") and family == "resnet":
        raise ValueError(f"--hparams: train_attention_only trains only attention weights, and backbone "
                         f"'{hparams['backbone']}' has none; use a ViT")
