"""Accuracy of a trained model on every environment of a dataset (the evaluate command's library)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.loaders import eval_loader
from ..data.registry import get_dataset_class


@dataclass
class EnvironmentAccuracy:
    index: int
    name: str
    n: int
    accuracy: float


def accuracy(algorithm, loader, device: torch.device) -> float:
    """Share of correct top-1 predictions over ``loader``, in eval mode (the mode is restored)."""
    correct, total = torch.zeros((), dtype=torch.long, device=device), 0
    was_training = algorithm.training
    algorithm.eval()
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            predictions = algorithm.predict(x)
            correct += (predictions.argmax(1) == y).sum()  # counted on the device: one read at the end
            total += len(y)
    algorithm.train(was_training)
    return correct.item() / max(total, 1)


def evaluate_environments(algorithm, dataset_name: str, data_dir: str, hparams: dict,
                          batch_size: int = 64, device: str | torch.device = "cpu",
                          num_workers: int = 0) -> list[EnvironmentAccuracy]:
    """Accuracy on each whole environment, with the deterministic evaluation transform."""
    dataset = get_dataset_class(dataset_name, data_dir)(data_dir, [], hparams)
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
