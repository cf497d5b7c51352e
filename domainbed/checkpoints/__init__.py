"""Checkpoints: our model.pkl (``model_file``), safe reading (``safe_loading``), the authors'
GMoE layout (``authors_layout``), DomainBed's own files (``domainbed_layout``) and
``load_checkpoint`` for all of them (``loading``)."""

from .authors_layout import authors_moe_blocks, from_authors_layout, is_authors_layout, to_authors_layout
from .domainbed_layout import domainbed_model, is_domainbed_layout
from .loading import fill_shared_names, load_checkpoint
from .model_file import BackgroundWriter, atomic_torch_save, cpu_state_dict, host_copy, model_record, save_model
from .safe_loading import UnsafeCheckpointError, read_checkpoint_file

__all__ = ["load_checkpoint", "save_model", "model_record", "atomic_torch_save", "cpu_state_dict", "BackgroundWriter",
           "host_copy",
           "read_checkpoint_file", "UnsafeCheckpointError", "fill_shared_names", "from_authors_layout",
           "to_authors_layout", "authors_moe_blocks", "is_authors_layout", "is_domainbed_layout", "domainbed_model"]
