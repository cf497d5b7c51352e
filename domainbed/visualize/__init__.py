"""See what a trained ViT / GMoE does: CLS attention maps, per-patch expert maps, expert usage.

Every function returns the numbers (tensors / arrays) it draws, and figures are built with
``matplotlib.figure.Figure`` (no pyplot state), so they work headless and inside tests.
"""

from .attention import attention_mass_mask, cls_attention, save_attention_figure, save_attention_maps
from .experts import expert_colours, expert_maps, save_expert_maps
from .inputs import InputSpec, input_spec, load_image_files, prepare_tensors, to_display
from .usage import ExpertUsage, dataset_usage, save_usage

__all__ = [
    "cls_attention", "attention_mass_mask", "save_attention_figure", "save_attention_maps",
    "expert_maps", "expert_colours", "save_expert_maps",
    "ExpertUsage", "dataset_usage", "save_usage",
    "InputSpec", "input_spec", "load_image_files", "prepare_tensors", "to_display",
]
