"""DomainBed's in/out splits: a seeded shuffle per environment, first share held out."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset


def split_dataset(dataset: Dataset, n_out: int, seed: int) -> tuple[Subset, Subset]:
    """Return ``(out, in)`` subsets: the first ``n_out`` indices of a seeded permutation are "out".

    DomainBed returns the held-out share first; keeping that order keeps its call sites readable.
    """
    n = len(dataset)
    if not 0 <= n_out <= n:
        raise ValueError(f"cannot hold out {n_out} of {n} examples")
    keys = np.arange(n)
    np.random.RandomState(seed).shuffle(keys)
    return Subset(dataset, keys[:n_out].tolist()), Subset(dataset, keys[n_out:].tolist())
