"""Featurizers and classifiers for DomainBed algorithms, from hparams.

Every algorithm gets its networks here, so any algorithm runs on any timm backbone (ERM with DeiT-S
is the fair baseline for GMoE-S; Fish on a GMoE is the paper's GMoE+Fish). A featurizer is a timm
model built with ``num_classes=0``: its forward is ``forward_features`` + pooling (+ the head's
dropout), and ``num_features`` is its width. Names are timm model names; ``resnet50`` means
torchvision's ImageNet weights, as in DomainBed.

Three featurizer hparams follow DomainBed's networks.py: ``freeze_bn`` keeps the featurizer's
BatchNorm layers in eval mode while training (their running statistics never move);
``features: "dinov2_linear"`` gives DomainBed's DINOv2 featurizer (the class token of each of the
last 4 blocks and the mean patch token of the last, all after the final norm, with DINOv2's own
position-embedding interpolation); ``train_attention_only`` trains only the featurizer's attention
weights (DomainBed's ``vit_attn_tune``).
"""

from __future__ import annotations

import math
import os
import re

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..moe import MoEConfig
from .gmoe import MOE_MODELS
from .pretrained import unavailable_reason

# DomainBed's ResNets use torchvision's ImageNet weights; timm names them with the tv_in1k tag.
ALIASES = {"resnet50": "resnet50.tv_in1k", "resnet18": "resnet18.tv_in1k"}
# Families trained with stochastic depth 0.1 by default (DeiT's recipe, the paper's GMoE).
STOCHASTIC_DEPTH_FAMILIES = ("vision_transformer", "deit", "gmoe")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be had; never fall back to random init."""


# ``features`` values: the model's own pooled features, or DomainBed's DINOv2 featurizer.
FEATURES = ("pooled", "dinov2_linear")


def backbone_family(name: str) -> str | None:
    """The timm module that defines the model ``name`` ("resnet", "vision_transformer", "gmoe"...),
    or None when timm does not know the name."""
    name = ALIASES.get(name, name).split(".")[0]
    if not timm.is_model(name):
        return None
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def is_moe_backbone(name: str) -> bool:
    """Whether the timm model ``name`` has sparse MoE layers (and so takes the MoE hparams)."""
    return name.split(".")[0] in MOE_MODELS


def timm_name(backbone: str) -> str:
    """The timm model name of a ``backbone`` hparam; a ValueError naming examples if timm lacks it."""
    name = ALIASES.get(backbone, backbone)
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown backbone '{backbone}'; use a timm model name such as "
                         "resnet50, deit_small_patch16_224, gmoe_small_patch16_224, "
                         "vit_micro_patch4_32, gmoe_micro_patch4_32")
    return name


def create_backbone(input_shape: tuple[int, ...], hparams: dict, num_classes: int = 0) -> nn.Module:
    """A timm model for images of ``input_shape`` configured by the backbone (and MoE) hparams.

    ``num_classes=0`` (the default) gives a featurizer: pooled features, no classification head.
    """
    name = timm_name(hparams["backbone"])
    # img_size reaches every family that takes it (patch-embedding models); size-agnostic ones
    # (ResNet, ConvNeXt) do without. drop_path_rate reaches every family that has stochastic depth
    # and is refused by one that has none (see _build).
    kwargs: dict = dict(num_classes=num_classes, in_chans=input_shape[0], drop_rate=hparams.get("dropout", 0.0),
                        img_size=tuple(input_shape[1:]), drop_path_rate=hparams.get("drop_path_rate", 0.0))
    if is_moe_backbone(name):
        kwargs["moe"] = MoEConfig.from_hparams(hparams)
    user_kwargs = dict(hparams.get("backbone_kwargs") or {})
    kwargs.update(user_kwargs)

    pretrained = bool(hparams.get("pretrained", False))
    weights_file = hparams.get("pretrained_file") or ""
    if weights_file:
        if not os.path.isfile(weights_file):
            raise PretrainedWeightsError(f"pretrained_file '{weights_file}' does not exist; "
                                         "give the path of a saved timm/DeiT state dict")
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = dict(file=weights_file)
    if not pretrained:
        return _build(name, False, kwargs, user_kwargs)
    reason = None if weights_file else unavailable_reason(name)
    if reason is not None:  # no weights to be had; but first, can the model be built at all?
        _build(name, False, kwargs, user_kwargs)
    else:
        try:
            return _build(name, True, kwargs, user_kwargs)
        except Exception as error:  # hub unreachable after all, bad file... or not the weights at all?
            _build(name, False, {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}, user_kwargs)
            reason = _first_line(error)
    raise PretrainedWeightsError(
        f"could not load pretrained weights for '{name}' ({reason}). Provide them: let timm "
        f"download them once into its Hugging Face cache (HF_HOME), or pass a local file with "
        f"--hparams '{{\"pretrained_file\": \"/path/to/weights.pth\"}}', or train from scratch with "
        f"--hparams '{{\"pretrained\": false}}'")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_UNEXPECTED = re.compile(r"unexpected keyword argument(?:\(s\): \[| )'(\w+)'")  # Python's and timm's wording


def _build(name: str, pretrained: bool, kwargs: dict, user_kwargs: dict) -> nn.Module:
    """``timm.create_model`` with the arguments the model takes: ``img_size`` is left out for a
    family without it; ``drop_path_rate`` too when 0, and refused when asked of a model without
    stochastic depth. A model that cannot be built (bad ``backbone_kwargs`` included) is a
    ValueError naming the real cause, never mistaken for missing weights."""
    kwargs = dict(kwargs)
    while True:
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as error:
            match = _UNEXPECTED.search(str(error))
            argument = match.group(1) if match else None
            if argument in user_kwargs or argument not in ("img_size", "drop_path_rate"):
                raise ValueError(_build_error(name, user_kwargs, error)) from None
            if argument == "drop_path_rate" and kwargs["drop_path_rate"] > 0:
                raise ValueError(f"backbone '{name}' has no stochastic depth, so drop_path_rate "
                                 f"{kwargs['drop_path_rate']} cannot apply; set drop_path_rate to 0") from None
            del kwargs[argument]
        except Exception as error:
            if pretrained:
                raise
            raise ValueError(_build_error(name, user_kwargs, error)) from None


def _build_error(name: str, user_kwargs: dict, error: BaseException) -> str:
    given = f" with backbone_kwargs {user_kwargs}" if user_kwargs else ""
    return f"cannot build backbone '{name}'{given}: {_first_line(error)}"


def build_featurizer(input_shape: tuple[int, ...], hparams: dict) -> nn.Module:
    """DomainBed's ``Featurizer``: images -> ``featurizer.num_features`` pooled features (see the
    module docstring for ``features``, ``freeze_bn`` and ``train_attention_only``)."""
    features = hparams.get("features") or "pooled"
    if features == "dinov2_linear":
        featurizer = DINOv2LinearFeatures.build(input_shape, hparams)
    elif features == "pooled":
        featurizer = create_backbone(input_shape, hparams, num_classes=0)
    else:
        raise ValueError(f"unknown features '{features}'; use one of {', '.join(FEATURES)}")
    if hparams.get("freeze_bn", False):
        freeze_batchnorm(featurizer)
    if hparams.get("train_attention_only", False):
        trained = [name for name, p in featurizer.named_parameters() if "attn" in name]
        if not trained:
            raise ValueError(f"train_attention_only: backbone '{hparams['backbone']}' has no attention "
                             "weights (no parameter named *attn*); use it with a ViT")
        for name, parameter in featurizer.named_parameters():
            parameter.requires_grad_("attn" in name)
    return featurizer


# ---------------------------------------------------------------------------- frozen BatchNorm
class _EvalModeBatchNorm:
    """Mixed into a BatchNorm class: ``train()`` leaves the layer in eval mode (DomainBed's
    ``freeze_bn``: normalise with the running statistics, never update them; the affine weights
    still train)."""

    def train(self, mode: bool = True):
        return super().train(False)


_EVAL_MODE_CLASSES: dict[type, type] = {}


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Keep every BatchNorm layer of ``module`` in eval mode from now on, whatever ``train()`` is
    called on it (the layers change class in place, so state_dict keys stay the same)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not isinstance(layer, _EvalModeBatchNorm):
            cls = type(layer)
            if cls not in _EVAL_MODE_CLASSES:
                frozen = type(f"EvalMode{cls.__name__}", (_EvalModeBatchNorm, cls), {"__module__": __name__})
                globals()[frozen.__name__] = frozen  # picklable by name
                _EVAL_MODE_CLASSES[cls] = frozen
            layer.__class__ = _EVAL_MODE_CLASSES[cls]
            layer.eval()
    return module


# ---------------------------------------------------------------------------- DINOv2 features
class DINOv2LinearFeatures(nn.Module):
    """DomainBed's DINOv2 featurizer on a timm DINOv2 ViT (``model``, built at its native 518 px
    grid, so its position embedding is the published one): the class token of each of the last
    ``n_last`` blocks and the mean patch token of the last block, each after the final norm,
    concatenated (``num_features = (n_last + 1) * width``), then dropout. Positions are
    interpolated to the input's patch grid as DINOv2's own code does (bicubic, scale factor with
    its 0.1 offset, no antialiasing), so the features equal those of ``torch.hub``'s
    ``dinov2_vitb14`` that DomainBed uses."""

    def __init__(self, model: nn.Module, n_last: int = 4, dropout: float = 0.0,
                 interpolate_offset: float = 0.1):
        super().__init__()
        if getattr(model, "no_embed_class", True) or getattr(model, "num_reg_tokens", 0) or \
                getattr(model, "cls_token", None) is None:
            raise ValueError("features 'dinov2_linear' needs a ViT with a class token, no register tokens and "
                             "a position embedding that covers it, e.g. vit_base_patch14_dinov2.lvd142m")
        if len(model.blocks) < n_last:
            raise ValueError(f"features 'dinov2_linear' takes the last {n_last} blocks; the ViT has {len(model.blocks)}")
        self.model = model
        self.n_last = n_last
        self.interpolate_offset = interpolate_offset
        self.dropout = nn.Dropout(dropout)
        self.num_features = (n_last + 1) * model.embed_dim

    @classmethod
    def build(cls, input_shape: tuple[int, ...], hparams: dict) -> "DINOv2LinearFeatures":
        name = timm_name(hparams["backbone"])
        if backbone_family(name) != "vision_transformer":
            raise ValueError(f"features 'dinov2_linear' needs a timm ViT backbone (DomainBed's is "
                             f"vit_base_patch14_dinov2.lvd142m), got '{hparams['backbone']}'")
        config = timm.models.get_pretrained_cfg(name)
        kwargs = dict(hparams.get("backbone_kwargs") or {})
        if config is not None and "img_size" not in kwargs:
            kwargs["img_size"] = tuple(config.input_size[1:])  # the native grid: no resampling at load
        model = create_backbone(input_shape, dict(hparams, backbone_kwargs=kwargs, dropout=0.0), num_classes=0)
        return cls(model, dropout=hparams.get("dropout", 0.0))

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """DINOv2's ``interpolate_pos_encoding`` for a ``rows`` x ``cols`` patch grid."""
        pos_embed = self.model.pos_embed.float()
        n = pos_embed.shape[1] - 1
        if rows * cols == n and rows == cols:
            return pos_embed
        side = int(math.sqrt(n))
        dim = pos_embed.shape[-1]
        grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        # DINOv2 names the grid (w0, h0) from the input's (width, height) and interpolates in that order
        w0, h0 = cols, rows
        if self.interpolate_offset:
            scale = ((w0 + self.interpolate_offset) / side, (h0 + self.interpolate_offset) / side)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        else:
            grid = F.interpolate(grid, size=(w0, h0), mode="bicubic", antialias=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([pos_embed[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens = model.patch_embed.proj(x)
        rows, cols = tokens.shape[-2:]
        tokens = model.patch_embed.norm(tokens.flatten(2).transpose(1, 2))
        tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(rows, cols).to(tokens.dtype)
        tokens = model.norm_pre(model.patch_drop(model.pos_drop(tokens)))
        outputs = []
        first_kept = len(model.blocks) - self.n_last
        for index, block in enumerate(model.blocks):
            tokens = block(tokens)
            if index >= first_kept:
                outputs.append(model.norm(tokens))
        features = [out[:, 0] for out in outputs] + [outputs[-1][:, model.num_prefix_tokens:].mean(dim=1)]
        return self.dropout(torch.cat(features, dim=1))


def build_classifier(in_features: int, num_classes: int, nonlinear: bool = False) -> nn.Module:
    """DomainBed's ``Classifier``: linear, or a two-hidden-layer MLP when ``nonlinear``."""
    if not nonlinear:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Linear(in_features, in_features // 2), nn.ReLU(),
                         nn.Linear(in_features // 2, in_features // 4), nn.ReLU(),
                         nn.Linear(in_features // 4, num_classes))


def build_network(input_shape: tuple[int, ...], num_classes: int, hparams: dict) -> nn.Module:
    """featurizer + classifier as one ``nn.Sequential`` (DomainBed's ``network``)."""
    featurizer = build_featurizer(input_shape, hparams)
    classifier = build_classifier(featurizer.num_features, num_classes, hparams.get("nonlinear_classifier", False))
    return nn.Sequential(featurizer, classifier)
