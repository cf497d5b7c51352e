"""SF-MoE / GMoE for domain generalization under the DomainBed protocol.

Importing the package registers the GMoE models with timm, so
``timm.create_model("gmoe_small_patch16_224", num_classes=7)`` works after ``import domainbed``.
"""

__version__ = "0.1.0"

from . import models  # noqa: F401  (registers timm models)
