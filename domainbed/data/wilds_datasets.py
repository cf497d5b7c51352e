"""WILDS datasets (Camelyon17, FMoW) through the optional ``wilds`` package.

Environments are groups of one metadata field, as in DomainBed: Camelyon17's hospital (0-4),
FMoW's region (0-5). Items are ``(PIL image, int)`` like the image-folder datasets.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch.utils.data import Dataset

from .base import ImageDomainDataset


class MissingDependencyError(ImportError, ValueError):
    """An optional package is not installed (a ValueError too, so scripts report it as bad input)."""


class WILDSEnvironment(Dataset):
    """The items of a WILDS dataset whose metadata field equals one value."""

    def __init__(self, wilds_dataset: Any, indices: Sequence[int]) -> None:
        self.wilds_dataset = wilds_dataset
        self.indices = list(indices)

    @property
    def targets(self) -> list[int]:
        return [int(self.wilds_dataset.y_array[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self.indices[index]
        return self.wilds_dataset.get_input(item), int(self.wilds_dataset.y_array[item])


class WILDSDataset(ImageDomainDataset):
    """Base: ``WILDS_NAME`` is the name ``wilds.get_dataset`` knows, ``METADATA_FIELD`` defines environments."""

    WILDS_NAME = ""
    METADATA_FIELD = ""

    @classmethod
    def check_data(cls, root: str) -> None:
        try:
            import wilds  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                f"{cls.__name__} needs the wilds package: pip install wilds (or pip install 'domainbed-sfmoe[wilds]')"
            ) from None

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        name = type(self).__name__
        try:
            import wilds
        except ImportError:
            raise MissingDependencyError(
                f"{name} needs the wilds package: pip install wilds (or pip install 'domainbed-sfmoe[wilds]')"
            ) from None
        try:
            dataset = wilds.get_dataset(dataset=self.WILDS_NAME, root_dir=str(root), download=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{name} not found under {root}; download it: "
                f"python -m domainbed.scripts.download --data_dir {root} --datasets {name}"
            ) from None
        field = dataset.metadata_fields.index(self.METADATA_FIELD)
        groups = dataset.metadata_array[:, field]
        self.datasets = [
            WILDSEnvironment(dataset, (groups == env).nonzero().flatten().tolist())
            for env in range(len(self.ENVIRONMENTS))
        ]
        self.num_classes = int(dataset.n_classes)


class WILDSCamelyon(WILDSDataset):
    WILDS_NAME = "camelyon17"
    METADATA_FIELD = "hospital"


class WILDSFMoW(WILDSDataset):
    WILDS_NAME = "fmow"
    METADATA_FIELD = "region"
