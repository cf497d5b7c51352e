"""CLS-token attention maps of a ViT, per head, DINO-style (Caron et al. 2021, Fig. 1 and 3).

timm's ``Attention`` runs fused scaled-dot-product attention, so the weights never exist as a
tensor. We capture the input of the chosen block's attention with a forward pre-hook and
recompute ``softmax(q k^T * scale)`` from its own ``qkv`` projection (and ``q_norm``/``k_norm``):
the model is not modified and the numbers are the ones its forward uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

__all__ = ["attention_input", "attention_weights", "cls_attention", "attention_mass_mask",
           "upsample_maps", "patch_grid", "attention_figure", "save_attention_figure", "save_attention_maps"]


class _StopForward(Exception):
    """Raised by the hook once the wanted input is captured: later blocks need not run."""


def _blocks(network: nn.Module) -> nn.Sequential:
    blocks = getattr(network, "blocks", None)
    if blocks is None or len(blocks) == 0 or not hasattr(blocks[0], "attn"):
        raise ValueError(f"{type(network).__name__} has no transformer blocks with self-attention; "
                         "attention maps need a ViT backbone (e.g. vit_*, deit_*, gmoe_*)")
    return blocks


def _resolve_block(network: nn.Module, block: int) -> nn.Module:
    blocks = _blocks(network)
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(f"block {block} out of range for a ViT with {len(blocks)} blocks "
                         f"(use 0..{len(blocks) - 1}, or -1 for the last)")
    attn = blocks[block].attn
    for name in ("qkv", "num_heads", "head_dim", "scale"):
        if not hasattr(attn, name):
            raise ValueError(f"block {block}'s attention ({type(attn).__name__}) has no '{name}'; "
                             "only timm's standard Attention (qkv projection) is supported")
    return attn


@torch.no_grad()
def attention_input(network: nn.Module, x: torch.Tensor, block: int = -1) -> torch.Tensor:
    """The tokens ``[B, N, D]`` entering ``blocks[block].attn`` (after ``norm1``) for images ``x``."""
    attn = _resolve_block(network, block)
    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        tokens = args[0] if args else kwargs["x"]
        captured.append(tokens.detach())
        raise _StopForward

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        network.forward_features(x) if hasattr(network, "forward_features") else network(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"the forward of {type(network).__name__} never called block {block}'s attention")
    return captured[0]


@torch.no_grad()
def attention_weights(attn: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T * scale)`` of a timm ``Attention`` on ``tokens`` [B, N, D]: ``[B, heads, N, N]``.

    Rows sum to 1 (row i: how token i spreads its attention over all tokens)."""
    batch, num_tokens, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
    return logits.softmax(dim=-1)


def patch_grid(network: nn.Module, num_patches: int) -> tuple[int, int]:
    """(rows, columns) of the patch tokens: the patch embedding's grid, else a square."""
    grid = getattr(getattr(network, "patch_embed", None), "grid_size", None)
    if grid is not None and grid[0] * grid[1] == num_patches:
        return int(grid[0]), int(grid[1])
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ValueError(f"cannot arrange {num_patches} patch tokens in a grid")
    return side, side


@torch.no_grad()
def cls_attention(network: nn.Module, x: torch.Tensor, block: int = -1) -> torch.Tensor:
    """Attention of the CLS token to every patch, per head: ``[B, heads, gh, gw]``.

    Prefix tokens (CLS, registers) are left out, so a map sums to 1 minus the attention the CLS
    token pays to prefix tokens. Per-image maps of a capacity-limited MoE model depend on the
    rest of the batch (earlier MoE blocks drop tokens batch-wide); pass one image at a time for
    maps that do not.
    """
    attn = _resolve_block(network, block)
    if getattr(network, "cls_token", None) is None:
        raise ValueError(f"{type(network).__name__} has no CLS token; CLS attention maps need a ViT with "
                         "class_token=True")
    weights = attention_weights(attn, attention_input(network, x, block))
    prefix = int(getattr(network, "num_prefix_tokens", 1))
    cls_row = weights[:, :, 0, prefix:]
    grid = patch_grid(network, cls_row.shape[-1])
    return cls_row.reshape(*cls_row.shape[:2], *grid)


def attention_mass_mask(attn: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """DINO's mask: per map (last two dims), the fewest patches holding ``threshold`` of its mass.

    Patches are sorted by attention, descending, and kept while the mass before them is below
    ``threshold``; so the kept mass is >= threshold and dropping the weakest kept patch takes it
    below. Mass is relative to the map's own sum. Returns a bool tensor shaped like ``attn``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (share of attention mass to keep), got {threshold}")
    if attn.dim() < 2:
        raise ValueError(f"expected maps [..., gh, gw], got shape {tuple(attn.shape)}")
    flat = attn.detach().double().flatten(-2)
    share = flat / flat.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    ordered, order = share.sort(dim=-1, descending=True, stable=True)
    mass_before = ordered.cumsum(dim=-1) - ordered
    keep_sorted = mass_before < threshold
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(attn.shape)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Patch-grid maps ``[..., gh, gw]`` -> pixel maps ``[..., H, W]`` (nearest: each patch a block)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    dtype = flat.dtype
    up = F.interpolate(flat.float(), size=tuple(size), mode="nearest")
    return up.to(dtype).reshape(*lead, *size)


# ---------------------------------------------------------------------------------------- figure
PANEL_INCHES = 2.2
DPI = 100
MAX_COLUMNS = 4


def _panel_grid(count: int) -> tuple[int, int]:
    columns = min(count, MAX_COLUMNS)
    return -(-count // columns), columns


HEAT_CMAP, HEAT_ALPHA = "inferno", 0.6
COLORBAR_INCHES = 0.8  # the strip on the right holding the colour bar, its ticks and its label


def _overlay(ax, image: np.ndarray, heat: np.ndarray, mask: np.ndarray, title: str, vmax: float):
    ax.imshow(image, interpolation="nearest")
    shown = ax.imshow(heat, cmap=HEAT_CMAP, alpha=HEAT_ALPHA, vmin=0.0, vmax=vmax, interpolation="nearest")
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return shown


def attention_figure(image: np.ndarray, attn: torch.Tensor, masks: torch.Tensor, mean_mask: torch.Tensor,
                     title: str = "", threshold: float | None = None) -> Figure:
    """Panels: the image, the mean over heads, then each head; heat maps over the image with the
    outline of the kept-mass mask, all on one colour scale (0 to the largest weight of any map), read
    on the colour bar at the right: the CLS token's attention weight per patch. ``image`` [H, W, 3];
    ``attn``, ``masks`` [heads, gh, gw]; ``mean_mask`` [gh, gw]. Exactly ``2 + heads`` panel axes,
    then the colour bar's axes (``figure.axes[-1]``)."""
    heads = attn.shape[0]
    size = image.shape[:2]
    heat = upsample_maps(attn.float(), size).cpu().numpy()
    mask_up = upsample_maps(masks.float(), size).cpu().numpy() > 0.5
    mean_heat = heat.mean(axis=0)
    mean_up = upsample_maps(mean_mask.float(), size).cpu().numpy() > 0.5
    # one scale for every map (the mean never exceeds the largest head), so panels compare
    vmax = max(float(heat.max()), 1e-12)
    rows, columns = _panel_grid(2 + heads)
    width = columns * PANEL_INCHES
    figure = Figure(figsize=(width, rows * PANEL_INCHES), dpi=DPI)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[2 + heads:]:
        figure.delaxes(extra)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("input", fontsize=8)
    axes[0].axis("off")
    shown = _overlay(axes[1], image, mean_heat, mean_up, f"mean of heads ({int(mean_mask.sum())} patches)", vmax)
    for h in range(heads):
        _overlay(axes[2 + h], image, heat[h], mask_up[h], f"head {h} ({int(masks[h].sum())} patches)", vmax)
    # the colour bar in a strip at the right, as tall as the panels
    figure.subplots_adjust(right=1 - COLORBAR_INCHES / width)
    bottom, top = figure.subplotpars.bottom, figure.subplotpars.top
    cax = figure.add_axes((1 - (COLORBAR_INCHES - 0.12) / width, bottom + 0.1 * (top - bottom),
                           0.12 / width, 0.8 * (top - bottom)))
    bar = figure.colorbar(shown, cax=cax)
    bar.set_label("CLS attention weight per patch", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if threshold is not None:
        title = f"{title}; outlines: patches holding {threshold:.0%} of the mass".lstrip("; ")
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def save_attention_figure(path: str | os.PathLike, image: np.ndarray, attn: torch.Tensor, threshold: float = 0.6,
                          title: str = "") -> Path:
    """Build the figure of one image's maps ``attn`` [heads, gh, gw] with masks at ``threshold``; save a PNG."""
    masks = attention_mass_mask(attn, threshold)
    mean_mask = attention_mass_mask(attn.mean(dim=0), threshold)
    figure = attention_figure(image, attn, masks, mean_mask, title=title, threshold=threshold)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------------------- whole model
def save_attention_maps(algorithm, images: torch.Tensor, output_dir: str | os.PathLike,
                        names: list[str] | None = None, threshold: float = 0.6, block: int = -1,
                        dataset: str | None = None) -> list[Path]:
    """``<name>_attention.png`` per image in ``output_dir``: block ``block``'s CLS attention per head.

    ``images`` are model inputs ``[B, C, H, W]`` (already through the dataset's eval transform);
    ``dataset`` (default: the checkpoint's) only decides how to un-normalise them for display.
    Each image runs alone (batch of one) in eval mode, so a capacity-limited MoE's drops in
    earlier blocks cannot make one image's map depend on the others.
    """
    from .inputs import each_image_alone

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (share of attention mass to keep), got {threshold}")
    network = algorithm.evaluation_model().featurizer
    _resolve_block(network, block)
    block_index = block % len(network.blocks)
    paths = []
    for x, name, display in each_image_alone(algorithm, images, names, dataset):
        maps = cls_attention(network, x, block)[0].cpu()
        paths.append(save_attention_figure(Path(output_dir) / f"{name}_attention.png", display, maps, threshold,
                                           title=f"{name}: CLS attention, block {block_index}"))
    return paths
