"""DomainBed's ``domainbed.lib.misc`` helpers that scripts and notebooks import: ``seed_hash``,
``Tee``, ``print_row``, ``print_separator``, ``split_dataset`` and
``make_weights_for_balanced_classes``. Importing it does not import torch."""

from __future__ import annotations

import numbers
import sys

from ..seeding import seed_hash

__all__ = ["seed_hash", "Tee", "print_row", "print_separator", "split_dataset",
           "make_weights_for_balanced_classes"]


class Tee:
    """A stream that writes to the current ``sys.stdout`` and appends to ``fname`` (DomainBed sets
    ``sys.stdout = Tee(out.txt)``)."""

    def __init__(self, fname, mode: str = "a"):
        self.stdout = sys.stdout
        self.file = open(fname, mode)

    def write(self, message: str) -> None:
        self.stdout.write(message)
        self.file.write(message)
        self.flush()

    def flush(self) -> None:
        self.stdout.flush()
        self.file.flush()


def print_separator() -> None:
    print("=" * 80)


def print_row(row, colwidth: int = 10, latex: bool = False) -> None:
    """One table row, each value left-aligned in ``colwidth`` characters (floats with 10 decimals,
    cut to the width), separated by two spaces or, with ``latex``, by `` & `` and ended by ``\\\\``."""
    def cell(value) -> str:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
            value = f"{float(value):.10f}"
        return str(value).ljust(colwidth)[:colwidth]

    separator, end = (" & ", "\\\\") if latex else ("  ", "")
    print(separator.join(cell(value) for value in row), end)


def split_dataset(dataset, n: int, seed: int = 0):
    """DomainBed's split: (the first ``n`` examples of a seeded shuffle, the rest)."""
    from ..data.splits import split_dataset as split

    return split(dataset, n, seed)


def make_weights_for_balanced_classes(dataset):
    """Per-example weights 1 / (classes present x count of the example's class), DomainBed's
    ``class_balanced`` sampling weights (a float tensor)."""
    import torch

    from ..data.loaders import class_balanced_weights, dataset_labels

    return class_balanced_weights(dataset_labels(dataset)).to(torch.float32)
