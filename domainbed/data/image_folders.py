"""Image-folder datasets (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet, SVIRO), and datasets
of one's own images (``FolderDataset``: ``<data_dir>/<name>/<domain>/<class>/<image>``).

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
from .catalog import DatasetInfo, building_folder_dataset, dataset_info, folder_dataset_dir, folder_layout


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


# ---------------------------------------------------------------------- datasets of one's own images

class FolderDataset(ImageFolderDataset):
    """A dataset of one's own images, ``<data_dir>/<name>/<domain>/<class>/<image>``: environments
    are the domain folders (sorted), classes the sorted union of class folders, with DomainBed's
    image-dataset defaults (see ``catalog.describe_folder_dataset``). One subclass per dataset,
    named like it, made by ``folder_dataset_class``."""

    INFO: DatasetInfo

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        if dataset_info(type(self).__name__, str(root)) != self.INFO:
            raise ValueError(f"the domain folders of {type(self).__name__} under {root} are not the ones its class "
                             "was made for; look it up again: get_dataset_class(name, data_dir)")
        self.check_data(root)
        with building_folder_dataset(self.INFO):  # the base class checks test envs by the class's name
            super().__init__(root, test_envs, hparams)

    def __reduce__(self):
        """Pickled by its description: the class itself is made at run time."""
        return _new_folder_dataset, (self.INFO,), self.__dict__

    @classmethod
    def check_data(cls, root: str) -> None:
        """One line for each way the layout can be wrong: a domain without class folders or
        without images, fewer than two classes. Stops at the first image of each domain."""
        dataset_dir = cls._resolve_dataset_dir(str(root))
        layout = folder_layout(cls.__name__, str(root))
        classes: set[str] = set()
        for domain in cls.ENV_FOLDERS:
            domain_dir = os.path.join(dataset_dir, domain)
            domain_classes = _subfolders(domain_dir)
            if not domain_classes:
                raise ValueError(f"domain folder {domain_dir} of dataset {cls.__name__!r} has no class folders; "
                                 f"put each class's images in a folder of its own: {layout}")
            if not any(_holds_an_image(os.path.join(domain_dir, name)) for name in domain_classes):
                raise ValueError(f"domain folder {domain_dir} of dataset {cls.__name__!r} has no images in its class "
                                 f"folders (files ending in {', '.join(IMG_EXTENSIONS)}): {layout}")
            classes.update(domain_classes)
        if len(classes) < 2:
            raise ValueError(f"dataset {cls.__name__!r} has {len(classes)} class ({', '.join(sorted(classes))}) over "
                             f"all its domains; a classifier needs at least 2 class folders: {layout}")

    @classmethod
    def _resolve_dataset_dir(cls, root: str) -> str:
        dataset_dir = folder_dataset_dir(root, cls.__name__)
        if dataset_dir is None:
            raise FileNotFoundError(f"dataset {cls.__name__!r} not found: put your images in "
                                    f"{folder_layout(cls.__name__, root)} files")
        missing = [domain for domain in cls.ENV_FOLDERS if not os.path.isdir(os.path.join(dataset_dir, domain))]
        if missing:
            raise FileNotFoundError(f"dataset {cls.__name__!r} at {dataset_dir} has no domain folder(s) "
                                    f"{', '.join(missing)}; look it up again with its data_dir")
        return dataset_dir


def _holds_an_image(class_dir: str) -> bool:
    """Whether ``class_dir`` (or a folder inside it, as ImageFolder reads them) holds an image file."""
    for _, _, files in os.walk(class_dir, followlinks=True):
        if any(name.lower().endswith(IMG_EXTENSIONS) for name in files):
            return True
    return False


_FOLDER_CLASSES: dict[DatasetInfo, type[FolderDataset]] = {}


def folder_dataset_class(info: DatasetInfo) -> type[FolderDataset]:
    """The dataset class of one's own images described by ``info`` (from ``catalog.dataset_info``)."""
    if info not in _FOLDER_CLASSES:
        _FOLDER_CLASSES[info] = type(info.name, (FolderDataset,), {
            "INFO": info, "ENVIRONMENTS": list(info.environments), "N_STEPS": info.n_steps,
            "CHECKPOINT_FREQ": info.checkpoint_freq, "__module__": __name__, "__qualname__": info.name,
            "__doc__": f"{info.name}: one's own images in {len(info.environments)} domains "
                       f"({', '.join(info.environments)})",
        })
    return _FOLDER_CLASSES[info]


def _new_folder_dataset(info: DatasetInfo) -> FolderDataset:
    """An empty instance of ``info``'s class, for unpickling (the state is set after)."""
    cls = folder_dataset_class(info)
    return cls.__new__(cls)
