"""The dataset classes by name (DomainBed's ``datasets`` module: ``DATASETS``, ``get_dataset_class``,
``num_environments``).

Usage: ``ds = get_dataset_class("PACS")(data_dir, test_envs=[0], hparams={})``; ``ds[i]`` is
environment ``i`` yielding raw ``(x, y)`` items, and ``ds.train_transform(i)`` /
``ds.eval_transform`` turn ``x`` into a model input. Names and environments come from the
torch-free ``catalog``. Any other name given with a ``data_dir`` holding ``<data_dir>/<name>/<domain>/
<class>/<image>`` files is a dataset of one's own images: ``get_dataset_class(name, data_dir)``.
"""

from __future__ import annotations

from .base import MultipleDomainDataset
from .catalog import DATASETS, dataset_info, num_environments
from .digits import ColoredDigits, Debug28, Debug224, RotatedDigits
from .image_folders import PACS, SVIRO, VLCS, DomainNet, OfficeHome, TerraIncognita, folder_dataset_class
from .mnist import ColoredMNIST, RotatedMNIST
from .spawrious import (SpawriousM2M_easy, SpawriousM2M_hard, SpawriousM2M_medium, SpawriousO2O_easy,
                        SpawriousO2O_hard, SpawriousO2O_medium)
from .wilds_datasets import WILDSCamelyon, WILDSFMoW

_CLASSES: dict[str, type[MultipleDomainDataset]] = {
    cls.__name__: cls
    for cls in (Debug28, Debug224, ColoredMNIST, RotatedMNIST, VLCS, PACS, OfficeHome, TerraIncognita,
                DomainNet, SVIRO, WILDSCamelyon, WILDSFMoW, SpawriousO2O_easy, SpawriousO2O_medium,
                SpawriousO2O_hard, SpawriousM2M_easy, SpawriousM2M_medium, SpawriousM2M_hard, RotatedDigits,
                ColoredDigits)
}
assert list(_CLASSES) == DATASETS, "every catalog entry has its class, in the catalog's order"


def get_dataset_class(name: str, data_dir: str | None = None) -> type[MultipleDomainDataset]:
    """The dataset class registered under ``name`` (DomainBed's spelling, e.g. ``"OfficeHome"``); for
    any other name, the dataset of one's own images in ``data_dir``'s folder ``name`` (a subclass of
    ``FolderDataset`` named ``name``). ValueError naming the known datasets and that layout otherwise."""
    if name in _CLASSES:
        return _CLASSES[name]
    return folder_dataset_class(dataset_info(name, data_dir))


__all__ = ["DATASETS", "get_dataset_class", "num_environments", "MultipleDomainDataset", *DATASETS]
