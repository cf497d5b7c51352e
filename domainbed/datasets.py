"""DomainBed's public dataset names: ``DATASETS``, ``get_dataset_class``, ``num_environments``.

Usage: ``ds = get_dataset_class("PACS")(data_dir, test_envs=[0], hparams={})``; ``ds[i]`` is
environment ``i`` yielding raw ``(x, y)`` items, and ``ds.train_transform(i)`` /
``ds.eval_transform`` turn ``x`` into a model input.
"""

from __future__ import annotations

from .data.base import MultipleDomainDataset
from .data.digits import ColoredDigits, Debug28, Debug224, RotatedDigits
from .data.image_folders import PACS, SVIRO, VLCS, DomainNet, OfficeHome, TerraIncognita
from .data.mnist import ColoredMNIST, RotatedMNIST
from .data.wilds_datasets import WILDSCamelyon, WILDSFMoW

_REGISTRY: dict[str, type[MultipleDomainDataset]] = {
    cls.__name__: cls
    for cls in (
        Debug28,
        Debug224,
        ColoredMNIST,
        RotatedMNIST,
        VLCS,
        PACS,
        OfficeHome,
        TerraIncognita,
        DomainNet,
        SVIRO,
        WILDSCamelyon,
        WILDSFMoW,
        RotatedDigits,
        ColoredDigits,
    )
}

DATASETS: list[str] = list(_REGISTRY)


def get_dataset_class(name: str) -> type[MultipleDomainDataset]:
    """The dataset class registered under ``name`` (DomainBed's spelling, e.g. ``"OfficeHome"``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def num_environments(name: str) -> int:
    """Number of environments of dataset ``name``, without loading any data."""
    return len(get_dataset_class(name).ENVIRONMENTS)


__all__ = [
    "DATASETS",
    "get_dataset_class",
    "num_environments",
    "MultipleDomainDataset",
    *DATASETS,
]
