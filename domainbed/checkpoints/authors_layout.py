"""The authors' checkpoints: convert between their MoE checkpoint layout (their tutel-based code) and SparseMoE's.

In the authors' checkpoints a MoE block's FFN ``blocks.{i}.mlp`` holds
``gates.0.{temperature, cosine_projector.weight, cosine_projector.bias, sim_matrix}`` (cosine
router) or ``gates.0.wg.weight`` (linear router) and ``experts.batched_fc1_w`` [E, H, D],
``experts.batched_fc1_bias`` [E, H], ``experts.batched_fc2_w`` [E, H, D] (fc2 weight transposed:
in x out), ``experts.batched_fc2_bias`` [E, D]. Every other key is plain timm ViT and passes
through unchanged.
"""

from __future__ import annotations

import re

import torch

# authors' suffix (after "blocks.{i}.mlp.") -> ours; fc2 additionally needs a transpose
_AUTHORS_TO_OURS = {
    "gates.0.temperature": "router.log_scale",
    "gates.0.cosine_projector.weight": "router.projection.weight",
    "gates.0.cosine_projector.bias": "router.projection.bias",
    "gates.0.sim_matrix": "router.expert_embeddings",
    "gates.0.wg.weight": "router.weight",
    "experts.batched_fc1_w": "experts.fc1_weight",
    "experts.batched_fc1_bias": "experts.fc1_bias",
    "experts.batched_fc2_w": "experts.fc2_weight",
    "experts.batched_fc2_bias": "experts.fc2_bias",
}
_OURS_TO_AUTHORS = {ours: theirs for theirs, ours in _AUTHORS_TO_OURS.items()}
_TRANSPOSED = {"experts.batched_fc2_w", "experts.fc2_weight"}
_MOE_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?blocks\.(?P<block>\d+)\.mlp\.)(?P<suffix>.+)$")


def _split(key: str) -> tuple[str, int, str] | None:
    match = _MOE_KEY.match(key)
    if match is None:
        return None
    return match["prefix"], int(match["block"]), match["suffix"]


def authors_moe_blocks(state_dict: dict[str, torch.Tensor]) -> dict[int, int]:
    """{block index: number of experts} for every MoE block in an authors'-layout state dict."""
    found = {}
    for key, value in state_dict.items():
        parts = _split(key)
        if parts is not None and parts[2] == "experts.batched_fc1_w":
            found[parts[1]] = int(value.shape[0])
    return dict(sorted(found.items()))


def is_authors_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return bool(authors_moe_blocks(state_dict))


def _convert(state_dict: dict[str, torch.Tensor], mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        parts = _split(key)
        if parts is None or parts[2] not in mapping:
            out[key] = value
            continue
        prefix, _, suffix = parts
        if suffix in _TRANSPOSED:
            value = value.transpose(-1, -2).contiguous()
        elif suffix in ("gates.0.temperature", "router.log_scale"):
            value = value.reshape(1)
        out[prefix + mapping[suffix]] = value
    return out


def from_authors_layout(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[int, int]]:
    """Authors' keys -> SparseMoE keys for a whole model state dict (any key prefix, e.g.
    ``model.``, is kept). Returns the converted dict and {MoE block index: number of experts}."""
    return _convert(state_dict, _AUTHORS_TO_OURS), authors_moe_blocks(state_dict)


def to_authors_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SparseMoE keys -> the authors' keys (the inverse of ``from_authors_layout``)."""
    return _convert(state_dict, _OURS_TO_AUTHORS)


# Attention heads of the standard ViT/DeiT widths (the weights do not tell how D splits into heads).
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def authors_model(saved: dict) -> tuple[dict, dict, tuple[int, int, int]]:
    """(hparams, state dict in our names, input shape) of a checkpoint written by the authors' code.

    Width, depth, patch size, input size and FFN width come from the weights' shapes; experts,
    MoE blocks and router from the MoE keys; the number of attention heads from the checkpoint's
    own hparams/args (``num_heads``) or, for the standard ViT widths, from the ViT family's table.
    Keys are renamed to ours: ``model.head.`` -> ``classifier.``, ``model.`` -> ``featurizer.``."""
    from ..hparams import registry as hparams_registry

    converted, moe_blocks = from_authors_layout(saved["model_dict"])
    state = {}
    for key, value in converted.items():
        key = key[len("model."):] if key.startswith("model.") else key
        state[("classifier." + key[len("head."):]) if key.startswith("head.") else "featurizer." + key] = value
    patch = state["featurizer.patch_embed.proj.weight"]  # [D, C, p, p]
    embed_dim, in_chans, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    grid = int(round((state["featurizer.pos_embed"].shape[1] - 1) ** 0.5))
    depth = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("featurizer.blocks."))
    hidden = state[f"featurizer.blocks.{min(moe_blocks)}.mlp.experts.fc1_weight"].shape[1]
    router = "cosine" if any(k.endswith("router.expert_embeddings") for k in state) else "linear"
    args = dict(vars(saved["args"])) if hasattr(saved.get("args"), "__dict__") else dict(saved.get("args") or {})
    saved_hparams = dict(saved.get("model_hparams") or {})
    num_heads = saved_hparams.get("num_heads") or args.get("num_heads") or STANDARD_HEADS.get(embed_dim)
    if num_heads is None:
        raise ValueError(f"cannot tell the attention heads of this width-{embed_dim} ViT (not a standard "
                         f"ViT width: {', '.join(map(str, STANDARD_HEADS))}); add 'num_heads' to the "
                         "checkpoint's model_hparams")
    hparams = hparams_registry.default_hparams("SFMOE", args.get("dataset", "PACS"))
    hparams.update({key: value for key, value in saved_hparams.items()
                    if key in ("lr", "weight_decay", "batch_size", "dropout")})
    hparams.update(
        backbone="gmoe_small_patch16_224", pretrained=False, pretrained_file="",
        moe_blocks=list(moe_blocks), num_experts=next(iter(moe_blocks.values())), router=router,
        backbone_kwargs=dict(embed_dim=embed_dim, depth=depth, num_heads=int(num_heads),
                             patch_size=patch_size, mlp_ratio=hidden / embed_dim),
    )
    return hparams, state, (in_chans, grid * patch_size, grid * patch_size)
