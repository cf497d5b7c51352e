"""DomainBed's own model.pkl files: recognise them and rebuild their predictor here.

DomainBed's train.py saves ``{"args", "model_input_shape", "model_num_classes", "model_num_domains",
"model_hparams", "model_dict": algorithm.state_dict()}`` where ``model_hparams`` uses DomainBed's
names (``resnet18``, ``resnet_dropout``, ``nonlinear_classifier``, ``vit``, ``dinov2``...) and has no
``backbone``: that is how such a file is told apart from ours. Its featurizer wraps the real network
as ``.network``:

- DomainBed's ``ResNet``: a torchvision ResNet-18/50 (or timm's ``resnet50.ram_in1k`` with
  ``resnet50_augmix``) with ``fc`` replaced by an identity, then dropout. timm's ResNets name their
  modules as torchvision does, so ``featurizer.network.X`` is our featurizer's ``X``.
- DomainBed's ``DinoV2`` (``vit`` + ``dinov2``): torch.hub's ``dinov2_vitb14``, whose keys are timm's
  ``vit_base_patch14_dinov2`` keys plus an unused ``mask_token``; rebuilt with ``features:
  "dinov2_linear"``, which computes DomainBed's features (see ``models/backbones.py``).

The classifier is DomainBed's ``Classifier``: one Linear, or its 3-layer MLP
(``nonlinear_classifier``), the same modules as ours. The file is rebuilt as our ERM with those
networks, which predicts what DomainBed's ``algorithm.predict`` does for every method whose
prediction is ``classifier(featurizer(x))`` (Fish, SagNet and ERMPlusPlus keep them under other
names: their prediction networks are the ones taken). Anything else (DomainBed's MNIST_CNN,
Wide_ResNet or MLP featurizers, methods that predict otherwise) is refused with one line.
"""

from __future__ import annotations

import re

SUPPORTED = ("supported: DomainBed's ResNet-18 / ResNet-50 featurizers (resnet18, resnet50, resnet50_augmix) "
             "and its DINOv2 ViT-B/14 (vit + dinov2), each with a linear or nonlinear classifier")

# DomainBed algorithm -> (featurizer prefix, classifier prefix) of the networks its predict() uses
_PREDICTION_NETWORKS = {
    "Fish": ("network.net.0.", "network.net.1."),        # WholeFish
    "SagNet": ("network_f.", "network_c."),
    "ERMPlusPlus": ("network_sma.0.", "network_sma.1."),  # it predicts with the moving average
}
_DEFAULT_NETWORKS = ("featurizer.", "classifier.")
# DomainBed methods whose prediction is classifier(featurizer(x)) with those names
_FEATURIZER_CLASSIFIER_METHODS = frozenset((
    "ERM", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN", "CDANN", "VREx", "RSC", "SD",
    "ANDMask", "SANDMask", "IGA", "SelfReg", "Fishr", "TRM", "IB_ERM", "IB_IRM", "CAD", "CondCAD",
    "Transfer", "CausIRL_CORAL", "CausIRL_MMD", "EQRM", "RDM"))
_OTHER_PREDICTIONS = {
    "MTL": "its prediction also uses per-domain embeddings",
    "ARM": "its prediction adapts to each test batch with a context network",
    "ADRMX": "its prediction combines two featurizers",
    "URM": "its featurizer ends in an activation chosen by urm_generator_output",
}
# DomainBed's ResNets: blocks per stage
_RESNET_STAGES = {"basic": ((2, 2, 2, 2), 512), "bottleneck": ((3, 4, 6, 3), 2048)}
_DINOV2_DEFAULTS = dict(embed_dim=768, depth=12, num_heads=12, patch_size=14, img_size=518, mlp_ratio=4.0)
# attention heads of the standard ViT widths (the weights do not tell how D splits into heads)
_STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1536: 24}


def is_domainbed_layout(saved: dict) -> bool:
    """Whether a loaded model.pkl dict was written by DomainBed's train.py (its hparams use
    DomainBed's names and name no ``backbone``)."""
    hparams = saved.get("model_hparams")
    return isinstance(hparams, dict) and "backbone" not in hparams and "model_algorithm" not in saved


def _refuse(path, what: str) -> ValueError:
    return ValueError(f"'{path}' is a DomainBed model.pkl {what}; {SUPPORTED}")


def _prediction_networks(algorithm: str | None, state: dict, path) -> tuple[str, str]:
    if algorithm in _OTHER_PREDICTIONS:
        raise _refuse(path, f"of {algorithm}, which cannot be loaded here ({_OTHER_PREDICTIONS[algorithm]})")
    if algorithm in _PREDICTION_NETWORKS:
        return _PREDICTION_NETWORKS[algorithm]
    if algorithm in _FEATURIZER_CLASSIFIER_METHODS or algorithm is None:
        return _DEFAULT_NETWORKS
    # a method DomainBed does not have: fine if the file holds nothing but featurizer -> classifier
    roots = {key.split(".", 1)[0] for key in state}
    if roots <= {"featurizer", "classifier", "network"}:
        return _DEFAULT_NETWORKS
    raise _refuse(path, f"of algorithm '{algorithm}', whose prediction is not known to be classifier(featurizer(x))")


def _sub_state(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _featurizer_kind(featurizer: dict) -> str:
    """What DomainBed featurizer these (prefix-stripped) keys come from."""
    if "network.conv1.weight" in featurizer and "network.layer4.0.conv1.weight" in featurizer:
        return "resnet"
    if "network.cls_token" in featurizer and "network.blocks.0.attn.qkv.weight" in featurizer:
        return "dinov2"
    if "bn0.weight" in featurizer and "conv4.weight" in featurizer:
        return "DomainBed's MNIST_CNN featurizer"
    if any(key.startswith("block1.") for key in featurizer):
        return "DomainBed's Wide_ResNet featurizer"
    if "input.weight" in featurizer and "output.weight" in featurizer:
        return "DomainBed's MLP featurizer"
    return "an unrecognised featurizer"


def _resnet(featurizer: dict, saved_hparams: dict, path) -> tuple[dict, dict]:
    """(hparams, our featurizer state) of DomainBed's ResNet featurizer."""
    weights = _sub_state(featurizer, "network.")
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for key in weights if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        blocks.append(max(indices) + 1 if indices else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in weights else "basic"
    stages, _ = _RESNET_STAGES[kind]
    if tuple(blocks) != stages:
        raise _refuse(path, f"whose featurizer is a ResNet with {blocks} blocks per stage (not ResNet-18 or -50)")
    if kind == "basic":
        backbone = "resnet18"
    else:
        backbone = "resnet50.ram_in1k" if saved_hparams.get("resnet50_augmix") else "resnet50"
    hparams = dict(backbone=backbone, dropout=float(saved_hparams.get("resnet_dropout", 0.0) or 0.0))
    return hparams, weights


def _dinov2(featurizer: dict, saved_hparams: dict, path) -> tuple[dict, dict]:
    """(hparams, our featurizer state) of DomainBed's DINOv2 featurizer."""
    weights = {key: value for key, value in _sub_state(featurizer, "network.").items() if key != "mask_token"}
    patch = weights["patch_embed.proj.weight"]  # [D, C, p, p]
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    side = int(round((weights["pos_embed"].shape[1] - 1) ** 0.5))
    depth = 1 + max(int(key.split(".")[1]) for key in weights if key.startswith("blocks."))
    num_heads = saved_hparams.get("num_heads") or _STANDARD_HEADS.get(embed_dim)
    if num_heads is None:
        raise _refuse(path, f"whose DINOv2 ViT has width {embed_dim}, not a standard ViT width")
    shape = dict(embed_dim=embed_dim, depth=depth, num_heads=int(num_heads), patch_size=patch_size,
                 img_size=side * patch_size, mlp_ratio=weights["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim)
    kwargs = {key: value for key, value in shape.items() if _DINOV2_DEFAULTS[key] != value}
    hparams = dict(backbone="vit_base_patch14_dinov2.lvd142m", features="dinov2_linear", backbone_kwargs=kwargs,
                   dropout=float(saved_hparams.get("vit_dropout", 0.0) or 0.0),
                   train_attention_only=bool(saved_hparams.get("vit_attn_tune", False)))
    return hparams, {"model." + key: value for key, value in weights.items()}


def domainbed_model(saved: dict, path="model.pkl") -> tuple[dict, dict, tuple[int, ...]]:
    """(our ERM hparams, state dict in our names, input shape) of a DomainBed model.pkl, or a
    one-line ValueError naming what is supported."""
    from ..hparams import registry as hparams_registry

    state = saved["model_dict"]
    saved_hparams = dict(saved.get("model_hparams") or {})
    args = saved.get("args")
    args = dict(vars(args)) if hasattr(args, "__dict__") else dict(args or {})
    featurizer_prefix, classifier_prefix = _prediction_networks(args.get("algorithm"), state, path)
    featurizer = _sub_state(state, featurizer_prefix)
    classifier = _sub_state(state, classifier_prefix)

    kind = _featurizer_kind(featurizer)
    if kind == "resnet":
        backbone_hparams, featurizer_state = _resnet(featurizer, saved_hparams, path)
    elif kind == "dinov2":
        backbone_hparams, featurizer_state = _dinov2(featurizer, saved_hparams, path)
    else:
        raise _refuse(path, f"whose featurizer is {kind}")

    if set(classifier) == {"weight", "bias"}:
        nonlinear = False
    elif set(classifier) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}:
        nonlinear = True
    else:
        raise _refuse(path, f"whose classifier ({', '.join(sorted(classifier)[:4]) or 'none'}) is neither "
                            "DomainBed's Linear nor its nonlinear classifier")

    hparams = hparams_registry.default_hparams("ERM", args.get("dataset") or "PACS")
    hparams.update(backbone_hparams, pretrained=False, pretrained_file="", nonlinear_classifier=nonlinear,
                   freeze_bn=bool(saved_hparams.get("freeze_bn", False)), drop_path_rate=0.0)
    for name in ("lr", "weight_decay", "batch_size", "data_augmentation", "class_balanced"):
        if name in saved_hparams:  # NumPy scalars (DomainBed's random draws) as plain values
            value = saved_hparams[name]
            hparams[name] = value.item() if hasattr(value, "item") else value
    converted = {"featurizer." + key: value for key, value in featurizer_state.items()}
    converted.update({"classifier." + key: value for key, value in classifier.items()})
    input_shape = tuple(int(n) for n in saved["model_input_shape"])
    return hparams, converted, input_shape

