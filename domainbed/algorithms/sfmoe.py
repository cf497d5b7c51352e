"""SF-MoE / GMoE (Li et al., ICLR 2023) as a preset: ERM on a GMoE backbone with the seed README's
per-dataset hyperparameters.

The method lives in the backbone (``gmoe_*`` models, ``domainbed.models.gmoe``) and in the MoE
balance loss, which every algorithm adds on a MoE backbone; so ``--algorithm SFMOE`` and
``--algorithm ERM --hparams '{"backbone": "gmoe_small_patch16_224"}'`` train the same thing, and
``--algorithm Fish --hparams '{"backbone": "gmoe_small_patch16_224"}'`` is the paper's GMoE+Fish.
"""

from __future__ import annotations

from .erm import ERM

# The seed README's per-dataset SF-MoE settings: (learning rate, dropout, weight decay).
SEED_README_DEFAULTS = {
    "PACS": (3e-5, 0.0, 0.0),
    "VLCS": (1e-5, 0.5, 1e-6),
    "OfficeHome": (3e-5, 0.1, 1e-6),
    "TerraIncognita": (3e-5, 0.0, 1e-4),
    "DomainNet": (3e-5, 0.1, 0.0),
}


class SFMOE(ERM):
    """ERM whose default backbone is GMoE-S/16 (the micro GMoE on digits)."""

    @classmethod
    def default_backbone(cls, small_images: bool) -> str:
        return "gmoe_micro_patch4_32" if small_images else "gmoe_small_patch16_224"

    @classmethod
    def define_hparams(cls, space) -> None:
        if space.dataset not in SEED_README_DEFAULTS:
            return
        lr, dropout, weight_decay = SEED_README_DEFAULTS[space.dataset]
        for name, value in (("lr", lr), ("dropout", dropout), ("weight_decay", weight_decay)):
            old = space.specs[name]
            space.add(name, value, old.draw, replace=True, low=old.low, high=old.high)
