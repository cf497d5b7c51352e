"""Build any timm model as a DomainBed network from hparams.

Every algorithm gets its network here, so any algorithm can use any backbone (ERM with DeiT-S is the
fair baseline for GMoE-S). Names are timm model names; ``resnet50`` means torchvision's ImageNet
weights, as in DomainBed.
"""

from __future__ import annotations

import os

import timm
import torch.nn as nn

# DomainBed's ResNets use torchvision's ImageNet weights; timm names them with the tv_in1k tag.
ALIASES = {"resnet50": "resnet50.tv_in1k", "resnet18": "resnet18.tv_in1k"}
# Families whose constructor takes img_size (patch-embedding models) and drop_path_rate.
_TRANSFORMER_MODULES = ("vision_transformer", "deit", "gmoe")

MOE_HPARAMS = ("num_experts", "top_k", "router", "capacity_factor", "gate_noise",
               "expert_dropout", "moe_blocks")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be had; never fall back to random init."""


def is_moe_backbone(name: str) -> bool:
    return name.split(".")[0].startswith("gmoe_")


def moe_kwargs(hparams: dict) -> dict:
    """The sparse-MoE settings of a GMoE backbone, as model keyword arguments.

    ``capacity_factor: null`` (dropless) is passed as "dropless": timm.create_model drops None kwargs."""
    kwargs = {key: hparams[key] for key in MOE_HPARAMS if key in hparams}
    if "capacity_factor" in kwargs and kwargs["capacity_factor"] is None:
        kwargs["capacity_factor"] = "dropless"
    return kwargs


def _is_transformer(model_name: str) -> bool:
    entrypoint = timm.models.model_entrypoint(model_name.split(".")[0])
    return entrypoint.__module__.rsplit(".", 1)[-1] in _TRANSFORMER_MODULES


def build_network(input_shape: tuple[int, ...], num_classes: int, hparams: dict) -> nn.Module:
    """A timm model mapping images of ``input_shape`` to ``num_classes`` logits."""
    name = ALIASES.get(hparams["backbone"], hparams["backbone"])
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown backbone '{hparams['backbone']}'; use a timm model name such as "
                         "resnet50, deit_small_patch16_224, gmoe_small_patch16_224, "
                         "vit_micro_patch4_32, gmoe_micro_patch4_32")
    kwargs: dict = dict(num_classes=num_classes, in_chans=input_shape[0],
                        drop_rate=hparams.get("dropout", 0.0))
    if _is_transformer(name):
        kwargs.update(img_size=tuple(input_shape[1:]), drop_path_rate=hparams.get("drop_path_rate", 0.0))
    if is_moe_backbone(name):
        kwargs.update(moe_kwargs(hparams))
    kwargs.update(hparams.get("backbone_kwargs") or {})

    pretrained = bool(hparams.get("pretrained", False))
    weights_file = hparams.get("pretrained_file") or ""
    if weights_file:
        if not os.path.isfile(weights_file):
            raise PretrainedWeightsError(f"pretrained_file '{weights_file}' does not exist; "
                                         "give the path of a saved timm/DeiT state dict")
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = dict(file=weights_file)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:  # hub unreachable, no cached file, bad file...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedWeightsError(
            f"could not load pretrained weights for '{name}' ({reason}). Provide them: let timm "
            f"download them once into its Hugging Face cache (HF_HOME), or pass a local file with "
            f"--hparams '{{\"pretrained_file\": \"/path/to/weights.pth\"}}', or train from scratch with "
            f"--hparams '{{\"pretrained\": false}}'") from error
