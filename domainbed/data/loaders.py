"""Loaders whose batches are a pure function of (seed, step).

Training batches are drawn from per-epoch seeded permutations, so the batch of step ``s`` is the same
whether a run went straight through or was resumed from a checkpoint, and a batch larger than its
split simply wraps into the next epoch instead of hanging (DomainBed's loader hangs there). Each
example also carries its own augmentation seed, so random augmentation is reproducible too, with or
without worker processes.

With ``class_balanced`` (DomainBed's hparam) a batch is instead drawn with replacement, each example
with weight 1 / (number of classes x count of its class), as DomainBed's weighted sampler does; the
draw of step ``s`` comes from its own seed, so it too is a pure function of (seed, step).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..seeding import seed_hash


class SeededTransform(Dataset):
    """Apply ``transform`` to ``dataset[i]``'s input under a per-example seed, without touching the
    caller's global RNG. Items are addressed as ``(index, seed)`` pairs (see ``StepBatchSampler``)
    or as plain indices (deterministic transforms, evaluation)."""

    def __init__(self, dataset: Dataset, transform: Callable | None):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        x, y = self.dataset[index]
        if self.transform is not None:
            if seed is None:
                x = self.transform(x)
            else:  # seed only the CPU generator (torch.manual_seed would reseed every CUDA one too)
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    x = self.transform(x)
        return x, y


class StepBatchSampler(Sampler):
    """Infinite batches of ``(index, augmentation_seed)``; the batch of step ``s`` depends only on
    ``(seed, s)``. Start at ``start_step`` to resume."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0):
        if n == 0:
            raise ValueError("cannot draw training batches from an empty split")
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed_hash(self.seed, epoch))
        return torch.randperm(self.n, generator=generator)

    def batch(self, step: int) -> list[tuple[int, int]]:
        first = step * self.batch_size
        out = []
        epoch, perm = -1, None
        for position in range(first, first + self.batch_size):
            if position // self.n != epoch:
                epoch = position // self.n
                perm = self._permutation(epoch)
            out.append((int(perm[position % self.n]), seed_hash(self.seed, "aug", position)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class BalancedStepBatchSampler(StepBatchSampler):
    """``StepBatchSampler`` drawing each batch with replacement with per-example ``weights``
    (DomainBed's ``class_balanced``); the batch of step ``s`` depends only on ``(seed, s)``."""

    def __init__(self, weights: torch.Tensor, batch_size: int, seed: int, start_step: int = 0):
        super().__init__(len(weights), batch_size, seed, start_step)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def batch(self, step: int) -> list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(seed_hash(self.seed, "balanced", step))
        indices = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator)
        first = step * self.batch_size
        return [(int(index), seed_hash(self.seed, "aug", first + i)) for i, index in enumerate(indices)]


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every example of ``dataset`` (a split of an environment), read from the
    environments' ``targets`` without loading images when they have it."""
    if isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(y) for y in targets]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def class_balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """DomainBed's ``make_weights_for_balanced_classes``: 1 / (classes present x count of the
    example's class), so every class present is drawn equally often."""
    counts = Counter(int(y) for y in labels)
    return torch.tensor([1.0 / (len(counts) * counts[int(y)]) for y in labels], dtype=torch.double)


def train_loader(dataset: Dataset, transform: Callable | None, batch_size: int, seed: int,
                 start_step: int = 0, num_workers: int = 0, pin_memory: bool = False,
                 class_balanced: bool = False) -> Iterator:
    """An endless iterator over training batches ``(x, y)`` starting at ``start_step``
    (``class_balanced``: classes drawn equally often, see ``BalancedStepBatchSampler``)."""
    if class_balanced:
        if len(dataset) == 0:
            raise ValueError("cannot draw training batches from an empty split")
        sampler = BalancedStepBatchSampler(class_balanced_weights(dataset_labels(dataset)), batch_size, seed,
                                           start_step)
    else:
        sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step)
    loader = DataLoader(SeededTransform(dataset, transform), batch_sampler=sampler,
                        num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    return iter(loader)


def eval_loader(dataset: Dataset, transform: Callable | None, batch_size: int,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Ordered passes over ``dataset`` with the deterministic evaluation transform. With workers, they
    are kept between passes (``persistent_workers``): a run evaluates every checkpoint, and starting
    fresh worker processes each time (importing torch in each) would stall training for seconds."""
    return DataLoader(SeededTransform(dataset, transform), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(0))
