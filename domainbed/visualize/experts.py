"""Which expert each patch goes to: per-MoE-block maps of the router's top-1 choice.

The maps come from ``SparseMoE.last_routing`` after an ordinary eval-mode forward. With a
capacity limit (not dropless), evaluation applies it to each image's tokens on their own
(``eval_capacity="per_image"``, the default), so a map does not depend on the other images of the
batch; a model set to ``eval_capacity="batch"`` would route differently in other batches, which is
why ``save_expert_maps`` routes one image at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..moe import moe_layers
from .attention import patch_grid

__all__ = ["ExpertMap", "require_moe_layers", "block_label", "patch_routing", "expert_maps",
           "expert_colours", "expert_figure", "save_expert_figure", "save_expert_maps"]


@dataclass
class ExpertMap:
    """Routing of one MoE layer for a batch, on the patch grid (prefix tokens left out)."""

    expert: torch.Tensor   # [B, gh, gw] long: the router's top-1 expert of each patch
    dropped: torch.Tensor  # [B, gh, gw] bool: that choice was dropped by the capacity limit
    num_experts: int


def require_moe_layers(network: nn.Module) -> dict:
    """The network's SparseMoE layers by name; a clear error for a dense model."""
    layers = moe_layers(network)
    if not layers:
        raise ValueError(f"the model ({type(network).__name__}) has no MoE layers; expert maps need an "
                         "SF-MoE/GMoE checkpoint (backbone gmoe_*)")
    return layers


def block_label(layer_name: str) -> str:
    """'blocks.10.mlp' -> 'block 10' (the paper's numbering); other names unchanged."""
    parts = layer_name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return f"block {parts[1]}"
    return layer_name


def patch_routing(network: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """From the last forward: per MoE layer, (top-1 expert [B, P], dropped [B, P], E) over the patch tokens."""
    prefix = int(getattr(network, "num_prefix_tokens", 0))
    routing = {}
    for name, layer in require_moe_layers(network).items():
        record = layer.last_routing
        if record is None:
            raise ValueError(f"MoE layer {name} has not routed anything yet; run a forward first")
        if len(record.token_shape) != 2:
            raise ValueError(f"MoE layer {name} saw tokens of shape {record.token_shape}; expected (B, N)")
        batch, tokens = record.token_shape
        expert = record.expert_index[:, 0].reshape(batch, tokens)[:, prefix:].cpu()
        dropped = record.dropped[:, 0].reshape(batch, tokens)[:, prefix:].cpu()
        routing[name] = (expert, dropped, record.num_experts)
    return routing


@torch.no_grad()
def expert_maps(network: nn.Module, x: torch.Tensor) -> dict[str, ExpertMap]:
    """Run ``network`` on ``x`` (the caller puts it in eval mode) and return every MoE layer's patch map.

    Routing is that of this batch; see the module docstring about capacity."""
    require_moe_layers(network)
    network(x)
    maps = {}
    for name, (expert, dropped, num_experts) in patch_routing(network).items():
        grid = patch_grid(network, expert.shape[1])
        maps[name] = ExpertMap(expert.reshape(-1, *grid), dropped.reshape(-1, *grid), num_experts)
    return maps


def expert_colours(num_experts: int) -> np.ndarray:
    """Fixed categorical RGB colours ``[E, 3]``: tab10, tab20 beyond 10 experts, then evenly spaced hues."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if num_experts <= 10:
        colours = colormaps["tab10"].colors[:num_experts]
    elif num_experts <= 20:
        colours = colormaps["tab20"].colors[:num_experts]
    else:
        colours = colormaps["hsv"](np.arange(num_experts) / num_experts)[:, :3]
    return np.asarray(colours, dtype=float)[:, :3]


PANEL_INCHES = 2.6
DPI = 100
OVERLAY_ALPHA = 0.55
LEGEND_ROW_INCHES = 0.2


def expert_figure(image: np.ndarray, maps: dict[str, tuple[torch.Tensor, torch.Tensor]], num_experts: int,
                  title: str = "") -> Figure:
    """One panel per MoE layer: each patch tinted with its top-1 expert's colour over the image
    (``image`` [H, W, 3]), dropped choices marked with a black x; a shared legend "expert e".

    ``maps``: layer name -> (expert [gh, gw], dropped [gh, gw]). The tint is the panel's second
    image, an RGBA array ``[gh, gw, 4]`` stretched over the picture."""
    colours = expert_colours(num_experts)
    height, width = image.shape[:2]
    legend_columns = min(num_experts + 1, 2 * len(maps) + 1)  # what fits under the panels
    legend_rows = -(-(num_experts + 1) // legend_columns)
    legend_inches = LEGEND_ROW_INCHES * legend_rows
    figure = Figure(figsize=(len(maps) * PANEL_INCHES, PANEL_INCHES + 0.4 + legend_inches), dpi=DPI)
    axes = figure.subplots(1, len(maps), squeeze=False).ravel()
    any_dropped = False
    for ax, (name, (expert, dropped)) in zip(axes, maps.items()):
        expert, dropped = expert.cpu().numpy(), dropped.cpu().numpy()
        gh, gw = expert.shape
        tint = np.concatenate([colours[expert], np.full((gh, gw, 1), OVERLAY_ALPHA)], axis=-1)
        ax.imshow(image.mean(axis=-1), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.imshow(tint, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
        if dropped.any():
            any_dropped = True
            rows, cols = np.nonzero(dropped)
            ax.scatter((cols + 0.5) * width / gw - 0.5, (rows + 0.5) * height / gh - 0.5,
                       marker="x", c="black", s=18, linewidths=1.2)
        used = ", ".join(str(e) for e in np.unique(expert))
        ax.set_title(f"{block_label(name)} (experts {used})", fontsize=8)
        ax.axis("off")
    handles = [Patch(facecolor=colours[e], edgecolor="none", label=f"expert {e}") for e in range(num_experts)]
    if any_dropped:
        handles.append(Line2D([], [], marker="x", color="black", linestyle="none", label="dropped"))
    figure.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize=7, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(bottom=(legend_inches + 0.1) / figure.get_figheight())
    return figure


def save_expert_figure(path: str | os.PathLike, image: np.ndarray,
                       maps: dict[str, tuple[torch.Tensor, torch.Tensor]], num_experts: int, title: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    expert_figure(image, maps, num_experts, title).savefig(path, dpi=DPI)
    return path


def save_expert_maps(algorithm, images: torch.Tensor, output_dir: str | os.PathLike,
                     names: list[str] | None = None, dataset: str | None = None) -> list[Path]:
    """``<name>_experts.png`` per image in ``output_dir``: one panel per MoE block.

    ``images`` are model inputs ``[B, C, H, W]``; ``dataset`` (default: the checkpoint's) only
    decides how to un-normalise them for display. Each image is routed alone (batch of one) in
    eval mode, so with a capacity limit its map does not depend on the other images.
    """
    from .inputs import each_image_alone

    network = algorithm.evaluation_model().featurizer
    require_moe_layers(network)
    paths = []
    for x, name, display in each_image_alone(algorithm, images, names, dataset):
        maps = expert_maps(network, x)
        num_experts = max(m.num_experts for m in maps.values())
        panels = {layer: (m.expert[0], m.dropped[0]) for layer, m in maps.items()}
        paths.append(save_expert_figure(Path(output_dir) / f"{name}_experts.png", display, panels, num_experts,
                                        title=f"{name}: top-1 expert per patch"))
    return paths
