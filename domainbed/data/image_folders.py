"""Image-folder datasets (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet, SVIRO).

Layout (DomainBed's): ``<data_dir>/<FOLDER>/<environment>/<class>/<image>``. Environments are
the dataset's known environment folders in sorted order; extra sub-folders are ignored.
``root`` may be the data directory or the dataset folder itself (whatever it is named).

Classes are the sorted union of class folders over all environments, so a class missing from
one environment cannot shift the label indices of the others.

Images are opened lazily (construction only lists files). A corrupt or unreadable image raises
a ValueError naming the file when it is first read, instead of validating hundreds of
thousands of files up front.
"""

from __future__ import annotations

import os
from typing import Sequence

from PIL import Image
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .base import ImageDomainDataset


def load_rgb_image(path: str) -> Image.Image:
    """Open an image as RGB, or fail with a message naming the file and the fix."""
    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports corrupt files as OSError/SyntaxError
        raise ValueError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); delete or replace it, or re-download the dataset"
        ) from exc


def _subfolders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


class ImageFolderEnvironment(DatasetFolder):
    """One environment folder; labels index the dataset-wide ``classes`` list. Items are ``(PIL image, int)``."""

    def __init__(self, root: str, classes: Sequence[str]) -> None:
        self._all_classes = list(classes)
        super().__init__(root, loader=load_rgb_image, extensions=IMG_EXTENSIONS, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._all_classes, {name: index for index, name in enumerate(self._all_classes)}


class ImageFolderDataset(ImageDomainDataset):
    """A dataset whose environments are ImageFolders under one dataset folder."""

    FOLDER = ""  # folder name under the data directory (DomainBed's), from the catalog
    ENV_FOLDERS: list[str] = []  # environment folder names, sorted; ENVIRONMENTS are their short names

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("INFO")
        if info is not None:
            cls.FOLDER, cls.ENV_FOLDERS = info.folder, list(info.environment_folders)

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.dataset_dir = self._resolve_dataset_dir(str(root))
        env_dirs = [os.path.join(self.dataset_dir, folder) for folder in self.ENV_FOLDERS]
        self.classes = sorted(set().union(*(_subfolders(d) for d in env_dirs)))
        self.datasets = []
        for env_dir in env_dirs:
            environment = ImageFolderEnvironment(env_dir, self.classes)
            if len(environment) == 0:
                raise ValueError(
                    f"{type(self).__name__} environment folder {env_dir} contains no images "
                    f"(expected {env_dir}/<class>/<image file>); re-download: {self._download_hint(str(root))}"
                )
            self.datasets.append(environment)
        self.num_classes = len(self.classes)

    @classmethod
    def check_data(cls, root: str) -> None:
        cls._resolve_dataset_dir(str(root))

    @classmethod
    def _resolve_dataset_dir(cls, root: str) -> str:
        """The folder holding the environment folders: ``root/FOLDER``, ``root/<class name>`` or ``root``."""
        name = cls.__name__
        candidates = [os.path.join(root, cls.FOLDER), os.path.join(root, name), root]
        for candidate in candidates:
            if all(os.path.isdir(os.path.join(candidate, env)) for env in cls.ENV_FOLDERS):
                return candidate
        for candidate in candidates:
            present = [env for env in cls.ENV_FOLDERS if os.path.isdir(os.path.join(candidate, env))]
            if present:
                missing = [env for env in cls.ENV_FOLDERS if env not in present]
                raise FileNotFoundError(
                    f"{name} at {candidate} is missing environment folder(s) {', '.join(missing)}; "
                    f"download it again: {cls._download_hint(root)}"
                )
        raise FileNotFoundError(
            f"{name} not found: expected {os.path.join(root, cls.FOLDER)}/ with folders "
            f"{', '.join(cls.ENV_FOLDERS)}; download it: {cls._download_hint(root)}"
        )

    @classmethod
    def _download_hint(cls, root: str) -> str:
        """The download command; ``root`` given as the dataset folder itself means its parent is the data dir."""
        data_dir = root
        trimmed = os.path.normpath(root)
        if os.path.basename(trimmed) in (cls.FOLDER, cls.__name__) or any(
            os.path.isdir(os.path.join(root, env)) for env in cls.ENV_FOLDERS
        ):
            data_dir = os.path.dirname(trimmed) or "."
        return f"python -m domainbed.scripts.download --data_dir {data_dir} --datasets {cls.__name__}"


class VLCS(ImageFolderDataset):
    """VLCS's images, laid out as DomainBed's download leaves them (see the catalog)."""


class PACS(ImageFolderDataset):
    """PACS's images, laid out as DomainBed's download leaves them (see the catalog)."""


class OfficeHome(ImageFolderDataset):
    """OfficeHome's images, laid out as DomainBed's download leaves them (see the catalog)."""


class TerraIncognita(ImageFolderDataset):
    """TerraIncognita's images, laid out as DomainBed's download leaves them (see the catalog)."""


class DomainNet(ImageFolderDataset):
    """DomainNet's images, laid out as DomainBed's download leaves them (see the catalog)."""


class SVIRO(ImageFolderDataset):
    """SVIRO's images, laid out as DomainBed's download leaves them (see the catalog)."""
