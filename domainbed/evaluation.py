"""Accuracy of a trained model on every environment of a dataset (the evaluate command's library)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.loaders import eval_loader
from .datasets import get_dataset_class


@dataclass
class EnvironmentAccuracy:
    index: int
    name: str
    n: int
    accuracy: float


def evaluate_environments(algorithm, dataset_name: str, data_dir: str, hparams: dict,
                          batch_size: int = 64, device: str | torch.device = "cpu",
                          num_workers: int = 0) -> list[EnvironmentAccuracy]:
    """Accuracy on each whole environment, with the deterministic evaluation transform."""
    from .training import accuracy

    dataset = get_dataset_class(dataset_name)(data_dir, [], hparams)
    if tuple(dataset.input_shape) != tuple(algorithm.input_shape):
        raise ValueError(f"the model takes inputs of shape {tuple(algorithm.input_shape)} but "
                         f"{dataset_name} gives {tuple(dataset.input_shape)}; evaluate on the dataset "
                         "it was trained for (or the same image_size)")
    device = torch.device(device)
    results = []
    for index, environment in enumerate(dataset):
        loader = eval_loader(environment, dataset.eval_transform, batch_size, num_workers)
        results.append(EnvironmentAccuracy(index, dataset.ENVIRONMENTS[index], len(environment),
                                           accuracy(algorithm, loader, device)))
    return results
