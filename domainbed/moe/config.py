"""MoEConfig: the one owner of every sparse-MoE setting: its name, type, range and default.

The hparams a user writes (``num_experts``, ``top_k``, ``router``, ``router_dim``,
``capacity_factor``, ``eval_capacity``, ``gate_noise``, ``expert_dropout``, ``aux_loss``,
``moe_blocks``, ``aux_loss_weight``) are the fields of ``MoEConfig`` (``moe_blocks`` is the field
``blocks``). ``SETTINGS`` describes each once; the hparam registry declares the MoE hparams from it,
the GMoE timm models take their loose keyword arguments from it, and ``SparseMoE`` validates its
arguments through it. The models take one ``moe=MoEConfig(...)`` and hand ``layer_kwargs()`` to
every ``SparseMoE``. ``capacity_factor=None`` means dropless and stays ``None`` all the way.

Torch-free: the light commands read the names without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from ..hparams.space import HParam

ROUTERS = ("cosine", "linear")
AUX_LOSSES = ("importance_load", "switch")
BLOCK_PRESETS = ("last2", "every2")
# How capacity applies in evaluation (see SparseMoE): per image (batch-independent), over the whole
# batch (the authors' code: a prediction depends on its batch), or not at all.
EVAL_CAPACITIES = ("per_image", "batch", "dropless")


def _settings() -> tuple[HParam, ...]:
    """Each MoEConfig field as an hparam (``hparams.space.HParam``: default, draw, accepted values),
    named as users write it; ``HParam.check`` is the one validator of hparams and configs alike."""
    defaults = {field.name: field.default for field in dataclasses.fields(MoEConfig)}
    rules = {
        "num_experts": dict(kind=int, low=1),
        "top_k": dict(kind=int, low=1),
        "router": dict(kind=str, choices=ROUTERS),
        "router_dim": dict(kind=int, low=1),
        "capacity_factor": dict(kind=(int, float), low=0.0, nullable=True),
        "eval_capacity": dict(kind=str, choices=EVAL_CAPACITIES),
        "gate_noise": dict(kind=(int, float), low=0.0),
        "expert_dropout": dict(kind=(int, float), low=0.0, high=0.999, nullable=True),
        "aux_loss": dict(kind=str, choices=AUX_LOSSES),
        "blocks": dict(kind=(str, list, tuple)),
        "aux_loss_weight": dict(kind=(int, float), low=0.0),
    }
    draws = {"aux_loss_weight": lambda r: float(10 ** r.uniform(-3, -1))}
    return tuple(HParam(HPARAM_OF_FIELD.get(field, field), defaults[field],
                        draws.get(field, lambda r, value=defaults[field]: value), **rules[field])
                 for field in rules)


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
    router_dim: int = 256                 # cosine router's projection width
    capacity_factor: float | None = 1.5   # None: dropless (no token is ever dropped)
    eval_capacity: str = "per_image"      # capacity in evaluation: per image, so no batch dependence
    gate_noise: float = 1.0               # training noise std on router logits = gate_noise / num_experts
    expert_dropout: float | None = None   # None: keep the dropout of the dense FFN being upcycled
    aux_loss: str = "importance_load"     # or "switch"
    blocks: str | tuple[int, ...] = "last2"  # "last2", "every2" or block indices
    aux_loss_weight: float = 0.01         # weight of the summed balance losses in the training loss

    def __post_init__(self):
        object.__setattr__(self, "capacity_factor", parse_capacity_factor(self.capacity_factor))
        for setting in SETTINGS:
            problem = setting.check(getattr(self, HPARAM_FIELDS[setting.name]))
            if problem:
                raise ValueError(problem)
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k must be an integer in [1, num_experts={self.num_experts}], got {self.top_k!r}")
        if isinstance(self.blocks, str):
            if self.blocks not in BLOCK_PRESETS:
                raise ValueError(f"unknown moe_blocks {self.blocks!r}; use 'last2', 'every2' or a list of "
                                 "block indices")
        else:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.blocks):
                raise ValueError(f"moe_blocks must be 'last2', 'every2' or a list of block indices, got {self.blocks!r}")
            object.__setattr__(self, "blocks", tuple(sorted(set(self.blocks))))

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
        kwargs = {field: getattr(self, field) for field in LAYER_FIELDS}
        if kwargs["expert_dropout"] is None:
            del kwargs["expert_dropout"]  # from_mlp keeps the dense FFN's dropout
        return kwargs


HPARAM_OF_FIELD = {"blocks": "moe_blocks"}  # the one field spelled differently as an hparam
SETTINGS: tuple[HParam, ...] = _settings()
_FIELD_OF_HPARAM = {hparam: field for field, hparam in HPARAM_OF_FIELD.items()}
HPARAM_FIELDS = {setting.name: _FIELD_OF_HPARAM.get(setting.name, setting.name) for setting in SETTINGS}
HPARAM_NAMES = tuple(HPARAM_FIELDS)  # every hparam that exists only on a backbone with MoE layers
# The MoE hparams that make another model (what the layers are and where, how tokens are routed),
# not a regularisation strength and never drawn by a search: results give each value its own row,
# as they do a backbone ("SFMOE (top_k=2)"; ``results.records.label_methods``).
MODEL_HPARAMS = ("num_experts", "top_k", "router", "router_dim", "capacity_factor", "eval_capacity", "aux_loss",
                 "moe_blocks")
# the layers' own settings (blocks place them; aux_loss_weight weighs their loss in the algorithms)
LAYER_FIELDS = tuple(field for field in HPARAM_FIELDS.values() if field not in ("blocks", "aux_loss_weight"))


def moe_config_from_kwargs(moe: MoEConfig | None, kwargs: dict) -> MoEConfig:
    """Fold loose keyword arguments (``timm.create_model(..., top_k=2)``) into a config, popping them
    from ``kwargs``. Any MoE hparam name is accepted (``moe_blocks`` maps to ``blocks``)."""
    fields = {HPARAM_FIELDS[name]: kwargs.pop(name) for name in HPARAM_NAMES if name in kwargs}
    base = moe or MoEConfig()
    return base.replace(**fields) if fields else base
