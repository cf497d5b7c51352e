"""Expert usage by domain and by class: does routing follow the domain or the visual content?

For each MoE layer, the share of patch tokens whose top-1 expert is e, per domain (rows) and per
class (rows). The router's choice is counted, whether or not the capacity limit then dropped it.
Images are evaluated in eval mode, in batches of ``batch_size`` images of one environment in a
seeded order (evaluation capacity is per image by default, so the batches do not change routing).

``cluster_usage`` is the baseline for a dense model: the FFN-input tokens of chosen blocks
clustered by k-means into as many groups as a GMoE layer has experts, counted the same way. If
experts followed classes only because token features do, k-means clusters would too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from .experts import block_label, patch_routing, require_moe_layers

__all__ = ["ExpertUsage", "count_by_group", "row_shares", "collect_usage", "dataset_usage", "cluster_usage",
           "dataset_cluster_usage", "usage_figure", "save_usage"]


def count_by_group(expert: torch.Tensor, group: torch.Tensor, num_groups: int, num_experts: int) -> torch.Tensor:
    """Token counts ``[G, E]``: how many patch tokens of images in group g went to expert e.

    ``expert`` [B, P] (top-1 expert of each patch), ``group`` [B] (domain or class of each image)."""
    expert = expert.reshape(expert.shape[0], -1).long()
    cells = group.long().view(-1, 1) * num_experts + expert
    return torch.bincount(cells.reshape(-1), minlength=num_groups * num_experts).reshape(num_groups, num_experts)


def row_shares(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows that saw no token stay 0)."""
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


@dataclass
class ExpertUsage:
    """Top-1 token counts per MoE layer: ``by_domain[layer]`` [D, E], ``by_class[layer]`` [K, E]."""

    num_experts: int
    domain_names: list[str]
    class_names: list[str]
    by_domain: dict[str, np.ndarray] = field(default_factory=dict)
    by_class: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain lists (counts and row shares), for a JSON file."""
        return {
            "num_experts": self.num_experts, "domains": self.domain_names, "classes": self.class_names,
            "layers": {
                name: {"domain_counts": self.by_domain[name].tolist(),
                       "domain_shares": row_shares(self.by_domain[name]).tolist(),
                       "class_counts": self.by_class[name].tolist(),
                       "class_shares": row_shares(self.by_class[name]).tolist()}
                for name in self.by_domain
            },
        }


@torch.no_grad()
def collect_usage(network: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                  domain_names: list[str], class_names: list[str]) -> ExpertUsage:
    """Count top-1 routing over ``batches`` of (images, domain index [B], class index [B]).

    The caller puts ``network`` in eval mode and the images on its device."""
    layers = require_moe_layers(network)
    num_experts = max(layer.num_experts for layer in layers.values())
    usage = ExpertUsage(num_experts, list(domain_names), list(class_names))
    for name in layers:
        usage.by_domain[name] = np.zeros((len(domain_names), num_experts), dtype=np.int64)
        usage.by_class[name] = np.zeros((len(class_names), num_experts), dtype=np.int64)
    for x, domains, labels in batches:
        network(x)
        for name, (expert, _, _) in patch_routing(network).items():
            usage.by_domain[name] += count_by_group(expert, domains.cpu(), len(domain_names), num_experts).numpy()
            usage.by_class[name] += count_by_group(expert, labels.cpu(), len(class_names), num_experts).numpy()
    return usage


@torch.no_grad()
def cluster_usage(network: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                  domain_names: list[str], class_names: list[str], blocks: list[int], num_clusters: int,
                  seed: int = 0) -> ExpertUsage:
    """k-means clusters of the patch tokens entering the FFN of ``network.blocks[i]`` for each of
    ``blocks`` (fitted per block on every token seen), counted by domain and class like experts."""
    from sklearn.cluster import KMeans

    prefix = int(getattr(network, "num_prefix_tokens", 0))
    captured: dict[str, list[torch.Tensor]] = {f"blocks.{i}.mlp": [] for i in blocks}
    hooks = [network.blocks[i].mlp.register_forward_pre_hook(
        lambda module, args, name=f"blocks.{i}.mlp": captured[name].append(args[0][:, prefix:].float().cpu()))
        for i in blocks]
    domains, labels = [], []
    try:
        for x, domain, label in batches:
            network(x)
            domains.append(domain.cpu())
            labels.append(label.cpu())
    finally:
        for hook in hooks:
            hook.remove()
    domains, labels = torch.cat(domains), torch.cat(labels)
    usage = ExpertUsage(num_clusters, list(domain_names), list(class_names))
    for name, chunks in captured.items():
        tokens = torch.cat(chunks)  # [N images, P patches, D]
        flat = tokens.reshape(-1, tokens.shape[-1]).numpy()
        clusters = KMeans(num_clusters, n_init=4, random_state=seed).fit_predict(flat)
        clusters = torch.from_numpy(clusters).reshape(tokens.shape[0], tokens.shape[1])
        usage.by_domain[name] = count_by_group(clusters, domains, len(domain_names), num_clusters).numpy()
        usage.by_class[name] = count_by_group(clusters, labels, len(class_names), num_clusters).numpy()
    return usage


def dataset_cluster_usage(algorithm, dataset_name: str, data_dir: str, blocks: list[int], num_clusters: int,
                          max_per_env: int = 256, batch_size: int = 64, device: str | torch.device = "cpu",
                          seed: int = 0) -> ExpertUsage:
    """``cluster_usage`` of ``algorithm``'s featurizer over every environment of ``dataset_name``."""
    from ..data.registry import get_dataset_class

    network = algorithm.evaluation_model().featurizer
    if not hasattr(network, "blocks"):
        raise ValueError(f"k-means of FFN tokens needs a ViT with .blocks, got {type(network).__name__}")
    dataset = get_dataset_class(dataset_name, data_dir)(data_dir, [], algorithm.hparams)
    class_names = [str(c) for c in getattr(dataset, "classes", range(dataset.num_classes))]
    algorithm.eval()
    batches = _environment_batches(dataset, max_per_env, batch_size, device, seed)
    return cluster_usage(network, batches, dataset.environment_names, class_names, blocks, num_clusters, seed)


def _environment_batches(dataset, max_per_env: int, batch_size: int, device, seed: int):
    transform = dataset.eval_transform
    for env_index, env in enumerate(dataset):
        order = torch.randperm(len(env), generator=torch.Generator().manual_seed(seed + env_index))
        order = order[:max_per_env].tolist()
        for start in range(0, len(order), batch_size):
            items = [env[i] for i in order[start:start + batch_size]]
            x = torch.stack([transform(raw) for raw, _ in items]).to(device)
            labels = torch.tensor([int(y) for _, y in items])
            yield x, torch.full_like(labels, env_index), labels


def dataset_usage(algorithm, dataset_name: str, data_dir: str, max_per_env: int = 256, batch_size: int = 64,
                  device: str | torch.device = "cpu", seed: int = 0) -> ExpertUsage:
    """Expert usage of ``algorithm`` on up to ``max_per_env`` images (a seeded sample) of every
    environment of ``dataset_name``, in eval mode, in batches of ``batch_size`` from one environment."""
    from ..data.registry import get_dataset_class

    if max_per_env < 1 or batch_size < 1:
        raise ValueError(f"max_per_env and batch_size must be >= 1, got {max_per_env} and {batch_size}")
    network = algorithm.evaluation_model().featurizer
    require_moe_layers(network)
    dataset = get_dataset_class(dataset_name, data_dir)(data_dir, [], algorithm.hparams)
    if tuple(dataset.input_shape) != tuple(algorithm.input_shape):
        raise ValueError(f"{dataset_name} has inputs of shape {tuple(dataset.input_shape)} but the model takes "
                         f"{tuple(algorithm.input_shape)}; pass the dataset the model was trained on")
    class_names = [str(c) for c in getattr(dataset, "classes", range(dataset.num_classes))]
    algorithm.eval()
    batches = _environment_batches(dataset, max_per_env, batch_size, device, seed)
    return collect_usage(network, batches, dataset.environment_names, class_names)


# ---------------------------------------------------------------------------------------- figures
DPI = 100
MAX_ANNOTATED_CELLS = 400


def _heatmap(ax, shares: np.ndarray, row_names: list[str], title: str) -> None:
    ax.imshow(shares, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    rows, experts = shares.shape
    ax.set_xticks(range(experts), [str(e) for e in range(experts)], fontsize=7)
    ax.set_xlabel("expert", fontsize=8)
    ax.set_yticks(range(rows), row_names, fontsize=7 if rows <= 40 else 4)
    ax.set_title(title, fontsize=9)
    if shares.size <= MAX_ANNOTATED_CELLS:
        for r in range(rows):
            for e in range(experts):
                ax.text(e, r, f"{100 * shares[r, e]:.0f}", ha="center", va="center", fontsize=6,
                        color="black" if shares[r, e] > 0.6 else "white")


def usage_figure(usage: ExpertUsage, layer: str) -> Figure:
    """Two heat maps of one MoE layer: share of patch tokens per expert (%, rows sum to 100) by
    domain and by class."""
    by_domain, by_class = row_shares(usage.by_domain[layer]), row_shares(usage.by_class[layer])
    rows = max(len(usage.domain_names), len(usage.class_names))
    height = 1.6 + min(0.3 * rows, 30.0)
    width = 2.0 + 0.45 * usage.num_experts
    figure = Figure(figsize=(2 * width, height), dpi=DPI)
    ax_domain, ax_class = figure.subplots(1, 2, squeeze=True)
    _heatmap(ax_domain, by_domain, usage.domain_names, "by domain")
    _heatmap(ax_class, by_class, usage.class_names, "by class")
    figure.suptitle(f"{block_label(layer)}: share of patch tokens per top-1 expert (%)", fontsize=9)
    figure.tight_layout()
    return figure


def save_usage(usage: ExpertUsage, output_dir: str | os.PathLike) -> list[Path]:
    """``usage_<layer>.png`` per MoE layer and ``usage.json`` (counts and shares) in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer in usage.by_domain:
        path = output_dir / f"usage_{layer.replace('.', '_')}.png"
        usage_figure(usage, layer).savefig(path, dpi=DPI)
        paths.append(path)
    json_path = output_dir / "usage.json"
    json_path.write_text(json.dumps(usage.to_dict(), indent=1))
    return paths + [json_path]
