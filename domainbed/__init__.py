"""SF-MoE / GMoE for domain generalization under the DomainBed protocol.

The package imports nothing heavy: commands that only read records (``collect_results``,
``sweep status``) start without torch or timm. ``import domainbed.models`` registers the GMoE
models with timm (``timm.create_model("gmoe_small_patch16_224", num_classes=7)``); everything that
builds a model imports it for you.
"""

__version__ = "0.2.0"
