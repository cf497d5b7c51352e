"""MoEConfig: every setting of a model's sparse MoE layers, in one object from hparams to the layer.

The hparams a user writes (``num_experts``, ``top_k``, ``router``, ``capacity_factor``,
``gate_noise``, ``expert_dropout``, ``moe_blocks``) become one ``MoEConfig``; the GMoE timm models
take it as ``moe=...`` and hand ``layer_kwargs()`` to every ``SparseMoE``. ``capacity_factor=None``
means dropless and stays ``None`` all the way (no string round trip).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

ROUTERS = ("cosine", "linear")
AUX_LOSSES = ("importance_load", "switch")
BLOCK_PRESETS = ("last2", "every2")

# hparam name -> MoEConfig field (only moe_blocks is spelled differently)
HPARAM_FIELDS = {"num_experts": "num_experts", "top_k": "top_k", "router": "router",
                 "capacity_factor": "capacity_factor", "gate_noise": "gate_noise",
                 "expert_dropout": "expert_dropout", "moe_blocks": "blocks"}
# every hparam that exists only on a backbone with MoE layers (the layer settings and the loss weight)
HPARAM_NAMES = (*HPARAM_FIELDS, "aux_loss_weight")


def parse_capacity_factor(value) -> float | None:
    """None (or "dropless", kept for ``timm.create_model`` callers, which drop None kwargs) -> None."""
    if value is None or (isinstance(value, str) and value.lower() in ("dropless", "none")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"capacity_factor must be > 0, or null for dropless routing; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MoEConfig:
    """Sparse MoE settings: how many experts, how tokens pick them, where the layers go."""

    num_experts: int = 6
    top_k: int = 1
    router: str = "cosine"
    capacity_factor: float | None = 1.5   # None: dropless (no token is ever dropped)
    gate_noise: float = 1.0               # training noise std on router logits = gate_noise / num_experts
    expert_dropout: float | None = None   # None: keep the dropout of the dense FFN being upcycled
    router_dim: int = 256                 # cosine router's projection width
    aux_loss: str = "importance_load"     # or "switch"
    blocks: str | tuple[int, ...] = "last2"  # "last2", "every2" or block indices

    def __post_init__(self):
        if isinstance(self.num_experts, bool) or not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"num_experts must be an integer >= 1, got {self.num_experts!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be an integer in [1, num_experts={self.num_experts}], got {self.top_k!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; use one of {', '.join(ROUTERS)}")
        object.__setattr__(self, "capacity_factor", parse_capacity_factor(self.capacity_factor))
        if isinstance(self.gate_noise, bool) or not isinstance(self.gate_noise, (int, float)) or self.gate_noise < 0:
            raise ValueError(f"gate_noise must be >= 0, got {self.gate_noise!r}")
        if self.expert_dropout is not None and not 0.0 <= self.expert_dropout < 1.0:
            raise ValueError(f"expert_dropout must be in [0, 1), got {self.expert_dropout!r}")
        if self.aux_loss not in AUX_LOSSES:
            raise ValueError(f"unknown aux_loss {self.aux_loss!r}; use one of {', '.join(AUX_LOSSES)}")
        if isinstance(self.blocks, str):
            if self.blocks not in BLOCK_PRESETS:
                raise ValueError(f"unknown moe_blocks {self.blocks!r}; use 'last2', 'every2' or a list of "
                                 "block indices")
        else:
            object.__setattr__(self, "blocks", tuple(sorted({int(i) for i in self.blocks})))

    @classmethod
    def from_hparams(cls, hparams: Mapping) -> "MoEConfig":
        """The config named by the MoE hparams present in ``hparams`` (defaults for the others)."""
        return cls(**{field: hparams[name] for name, field in HPARAM_FIELDS.items() if name in hparams})

    def replace(self, **changes) -> "MoEConfig":
        return dataclasses.replace(self, **changes)

    def block_indices(self, depth: int) -> list[int]:
        """The blocks to make sparse in a ``depth``-block ViT.

        "last2": the last two even-indexed blocks (8 and 10 of 12: the authors' F..F S F S F);
        "every2": every even-indexed block (0, 2, ...; "last2" is its tail); or explicit indices.
        """
        if isinstance(self.blocks, str):
            even = list(range(0, depth, 2))
            return even[-2:] if self.blocks == "last2" else even
        bad = [i for i in self.blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"moe_blocks {bad} out of range for a model with {depth} blocks (0..{depth - 1})")
        return list(self.blocks)

    def layer_kwargs(self) -> dict:
        """Keyword arguments of ``SparseMoE`` / ``SparseMoE.from_mlp``."""
        kwargs = dict(num_experts=self.num_experts, top_k=self.top_k, router=self.router,
                      capacity_factor=self.capacity_factor, gate_noise=self.gate_noise,
                      router_dim=self.router_dim, aux_loss=self.aux_loss)
        if self.expert_dropout is not None:
            kwargs["expert_dropout"] = self.expert_dropout
        return kwargs


def moe_config_from_kwargs(moe: MoEConfig | None, kwargs: dict, names: Sequence[str]) -> MoEConfig:
    """Fold loose keyword arguments (``timm.create_model(..., top_k=2)``) into a config, popping them
    from ``kwargs``. ``moe_blocks`` maps to ``blocks``."""
    fields = {("blocks" if name == "moe_blocks" else name): kwargs.pop(name) for name in names if name in kwargs}
    base = moe or MoEConfig()
    return base.replace(**fields) if fields else base
