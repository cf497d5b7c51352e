"""GMoE models: timm VisionTransformers whose FFN in chosen blocks is a SparseMoE.

Registered with timm, so ``timm.create_model("gmoe_small_patch16_224", num_classes=7)`` works
after ``import domainbed``. ``pretrained=True`` loads the DeiT ImageNet weights into the dense
ViT (timm's hub cache, or ``pretrained_cfg_overlay=dict(file=PATH)``) and then upcycles the FFNs
of the MoE blocks: every expert starts as a copy of that block's pretrained FFN.

The micro pair (``vit_micro_patch4_32`` dense, ``gmoe_micro_patch4_32`` sparse) is for 28-32 px
digit images on CPU: width 64, depth 6, 4 heads, MLP ratio 4, patch 4 -> 64 patch tokens at 32 px,
about 0.3M dense parameters, so a training step at batch 96 takes a fraction of a second on CPU.
It has no published weights.

MoE settings come as one ``moe=MoEConfig(...)`` (what the training pipeline passes) or as loose
keyword arguments named as the MoE hparams (``num_experts``, ``top_k``, ``moe_blocks``..., see
``moe.config``) folded into it; all others go to
timm's ``VisionTransformer``. ``timm.create_model`` drops None-valued kwargs, so a loose dropless
setting is spelled ``capacity_factor="dropless"``; inside a ``MoEConfig`` it is plain ``None``.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..moe import MoEConfig, SparseMoE
from ..moe.config import HPARAM_NAMES, moe_config_from_kwargs

__all__ = ["convert_to_moe", "resolve_moe_blocks", "MOE_KWARGS", "MOE_MODELS"]

# Loose keyword arguments the gmoe_* constructors fold into their MoEConfig (its hparam names).
MOE_KWARGS = HPARAM_NAMES
# The registered models that have sparse MoE layers (the backbones that take MoE hparams).
MOE_MODELS: set[str] = set()


def resolve_moe_blocks(moe_blocks: str | Sequence[int], depth: int) -> list[int]:
    """Block indices to make sparse ("last2", "every2" or explicit indices; see MoEConfig)."""
    return MoEConfig(blocks=moe_blocks).block_indices(depth)


def convert_to_moe(model: nn.Module, moe: MoEConfig | str | Sequence[int] | None = None, **moe_kwargs) -> nn.Module:
    """Replace ``model.blocks[i].mlp`` by ``SparseMoE.from_mlp`` (upcycled) for the config's blocks.

    Works on any timm ViT-style model with ``blocks[i].mlp`` being a timm ``Mlp``; in place, and
    returns the model. Convert after loading dense weights so the experts copy them. ``moe`` is a
    MoEConfig, or (shorthand) the blocks, with the other settings as keyword arguments.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"convert_to_moe needs a ViT with .blocks, got {type(model).__name__}")
    if moe is not None and not isinstance(moe, MoEConfig):
        moe_kwargs["moe_blocks"], moe = moe, None
    config = moe_config_from_kwargs(moe, moe_kwargs)
    if moe_kwargs:
        raise TypeError(f"unknown MoE settings: {', '.join(sorted(moe_kwargs))}")
    indices = config.block_indices(len(blocks))
    for i in indices:
        blocks[i].mlp = SparseMoE.from_mlp(blocks[i].mlp, **config.layer_kwargs())
    model.moe_block_indices = indices
    model.moe_config = config
    return model


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj", "classifier": "head",
        **kwargs,
    }


# The GMoE models start from DeiT's ImageNet-1k weights (the dense ViT's keys; MoE comes after).
default_cfgs = generate_default_cfgs({
    "gmoe_small_patch16_224.fb_in1k": _cfg(
        hf_hub_id="timm/deit_small_patch16_224.fb_in1k",
        url="https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth", license="apache-2.0"),
    "gmoe_base_patch16_224.fb_in1k": _cfg(
        hf_hub_id="timm/deit_base_patch16_224.fb_in1k",
        url="https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth", license="apache-2.0"),
    "gmoe_micro_patch4_32": _cfg(input_size=(3, 32, 32), crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "vit_micro_patch4_32": _cfg(input_size=(3, 32, 32), crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "vit_micro_wide_patch4_32": _cfg(input_size=(3, 32, 32), crop_pct=1.0, mean=(0.5, 0.5, 0.5),
                                     std=(0.5, 0.5, 0.5)),
})


def _create(variant: str, pretrained: bool, sparse: bool, moe: MoEConfig | None = None, **kwargs) -> VisionTransformer:
    config = moe_config_from_kwargs(moe, kwargs) if sparse else None
    model = build_model_with_cfg(VisionTransformer, variant, pretrained,
                                 pretrained_filter_fn=checkpoint_filter_fn,
                                 feature_cfg=dict(out_indices=3, feature_cls="getter"), **kwargs)
    return convert_to_moe(model, config) if sparse else model


def _register_moe(fn):
    """``register_model`` for a model with sparse MoE layers (recorded in MOE_MODELS)."""
    MOE_MODELS.add(fn.__name__)
    return register_model(fn)


@_register_moe
def gmoe_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """GMoE-S/16: DeiT-S/16 with 6-expert cosine-routed top-1 MoE FFNs in blocks 8 and 10."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1)
    return _create("gmoe_small_patch16_224", pretrained, sparse=True, **dict(args, **kwargs))


@_register_moe
def gmoe_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """GMoE-B/16: the same recipe on DeiT-B/16."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1)
    return _create("gmoe_base_patch16_224", pretrained, sparse=True, **dict(args, **kwargs))


_MICRO = dict(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=4, mlp_ratio=4.0)


@_register_moe
def gmoe_micro_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A CPU-sized GMoE for 32x32 images: MoE in blocks 2 and 4 of 6."""
    return _create("gmoe_micro_patch4_32", pretrained, sparse=True, **dict(_MICRO, **kwargs))


@register_model
def vit_micro_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The dense twin of ``gmoe_micro_patch4_32`` (identical except for the FFNs)."""
    return _create("vit_micro_patch4_32", pretrained, sparse=False, **dict(_MICRO, **kwargs))


# FFN width at which the dense micro ViT has as many parameters as gmoe_micro_patch4_32 with 6
# experts (about 0.67M): 730 hidden units instead of 256 in every block.
_WIDE_MLP_RATIO = 730 / 64


@register_model
def vit_micro_wide_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A dense micro ViT with the GMoE twin's parameter count (wider FFNs, about 2.9x their compute):
    the control that tells "more parameters" from "sparse routing"."""
    return _create("vit_micro_wide_patch4_32", pretrained, sparse=False,
                   **dict(_MICRO, mlp_ratio=_WIDE_MLP_RATIO, **kwargs))
