"""Convert between the authors' MoE checkpoint layout (their tutel-based code) and SparseMoE's.

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
