"""SF-MoE / GMoE (Li et al., ICLR 2023): ERM on a ViT whose late FFNs are sparse MoE layers.

The method is in the backbone (``gmoe_*`` models, see ``domainbed.models.gmoe``) and in the
auxiliary routing losses; the training step is ERM's.
"""

from __future__ import annotations

from ..models.backbones import is_moe_backbone
from .erm import ERM


class SFMOE(ERM):
    """Cross-entropy + ``aux_loss_weight`` x the sum of the MoE layers' importance/load losses."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        if not is_moe_backbone(hparams["backbone"]):
            raise ValueError(f"SFMOE needs a sparse-MoE backbone (gmoe_*), got '{hparams['backbone']}'; "
                             "use ERM for dense backbones")
        super().__init__(input_shape, num_classes, num_domains, hparams)
