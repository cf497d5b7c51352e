"""Spawrious (Lynch et al., 2023): four dog breeds photographed (generated) on six backgrounds, with
spurious background-breed correlations that flip between training and test.

Layout (what DomainBed's archive ``spawrious224.tar.gz`` unpacks to)::

    <data_dir>/spawrious224/<part>/<background>/<class>/<image>.png

with parts ``0`` and ``1`` (two disjoint sets of images), the backgrounds beach, desert, dirt,
jungle, mountain, snow and the classes bulldog, corgi, dachshund, labrador (labels 0-3 in that
order). ``root`` may be the data directory or the ``spawrious224`` folder itself (DomainBed's
``--data_dir`` for Spawrious), whatever it is named.

Environments are DomainBed's: ``Test`` (index 0, the test environment: train with
``--test_envs 0``), ``SC_group_1`` and ``SC_group_2``. Each is a list of ``(part, background,
class, limit)`` sources (:func:`environment_sources`): the first ``limit`` images of
``<part>/<background>/<class>/`` (file names sorted), all of them when ``limit`` is None.

* **O2O** (one-to-one): each breed has one training background. ``SC_group_k`` reads part k-1:
  every breed on its background (the first 97% of a folder of 3,168 images in group 1, 87% in
  group 2), plus every breed on a shared *filler* background for the remaining 3% / 13%. ``Test``
  is every breed on another background, from both parts.
* **M2M** (many-to-many): bulldog and dachshund share two training backgrounds, labrador and corgi
  two others, and the two groups swap them within each pair. ``Test`` puts each pair on two
  further backgrounds, both ways round. Everything comes from part 0.

The backgrounds per difficulty are DomainBed's (``domainbed/datasets.py``, ``SpawriousO2O_easy``
... ``SpawriousM2M_hard``). Two things differ: DomainBed takes the first ``limit`` files in
``os.listdir`` order (which depends on the filesystem), here the first in sorted order, so the
environments are the same on every machine; and a missing or empty folder is an error naming the
download command instead of an empty environment.

Images are opened lazily (construction only lists the folders it uses); a corrupt image raises a
ValueError naming the file when it is read. Training augmentation is DomainBed's for Spawrious:
resize, flip, colour jitter, grayscale (no random crop); evaluation is resize + ImageNet
normalisation like every image dataset.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

from torch.utils.data import Dataset
from torchvision.transforms import v2

from .base import ImageDomainDataset
from .catalog import SPAWRIOUS_CLASSES, SPAWRIOUS_DATASETS, SPAWRIOUS_FOLDER, SPAWRIOUS_PARTS
from .image_folders import load_rgb_image

IMAGES_PER_FOLDER = 3168  # images in each <part>/<background>/<class>/ folder (DomainBed's `total`)
O2O_SHARES = (0.97, 0.87)  # share of a breed on its own background in SC_group_1, SC_group_2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # DomainBed's; other files in the folders are ignored

# DomainBed lists the breeds in this order when it assembles an environment (labels follow
# SPAWRIOUS_CLASSES, the sorted order); the tables below are per breed in this order.
BREED_ORDER = ("bulldog", "dachshund", "labrador", "corgi")

# difficulty -> (training background per breed, test background per breed, filler background)
O2O_BACKGROUNDS = {
    "easy": (("desert", "jungle", "dirt", "snow"), ("dirt", "snow", "desert", "jungle"), "beach"),
    "medium": (("mountain", "beach", "dirt", "jungle"), ("jungle", "dirt", "beach", "snow"), "desert"),
    "hard": (("jungle", "mountain", "snow", "desert"), ("mountain", "snow", "desert", "jungle"), "beach"),
}
# difficulty -> (SC_group_1 background per breed, first test background per breed); SC_group_2 and
# the second half of Test swap the backgrounds within the pairs (bulldog, dachshund), (labrador, corgi).
M2M_BACKGROUNDS = {
    "easy": (("desert", "mountain", "dirt", "jungle"), ("dirt", "jungle", "mountain", "desert")),
    "medium": (("beach", "snow", "mountain", "desert"), ("desert", "mountain", "beach", "snow")),
    "hard": (("dirt", "jungle", "snow", "beach"), ("snow", "beach", "dirt", "jungle")),
}


class Source(NamedTuple):
    """The first ``limit`` images (all when None) of ``<part>/<background>/<class_name>/``."""

    part: str
    background: str
    class_name: str
    limit: int | None

    @property
    def folder(self) -> str:
        return f"{self.part}/{self.background}/{self.class_name}"


def _swap_pairs(backgrounds: Sequence[str]) -> tuple[str, ...]:
    """Per-breed backgrounds with bulldog <-> dachshund and labrador <-> corgi exchanged."""
    return (backgrounds[1], backgrounds[0], backgrounds[3], backgrounds[2])


def _one_per_breed(part: str, backgrounds: Sequence[str], limit: int | None) -> list[Source]:
    return [Source(part, background, breed, limit) for breed, background in zip(BREED_ORDER, backgrounds)]


def environment_sources(name: str, per_folder: int | None = None) -> list[list[Source]]:
    """The sources of environments Test, SC_group_1, SC_group_2 of Spawrious dataset ``name``, in
    DomainBed's order. ``per_folder`` (default ``IMAGES_PER_FOLDER``) sets the limits."""
    if name not in SPAWRIOUS_DATASETS:
        raise ValueError(f"unknown Spawrious dataset {name!r}; choose from {', '.join(SPAWRIOUS_DATASETS)}")
    per_folder = IMAGES_PER_FOLDER if per_folder is None else per_folder
    kind, level = name.removeprefix("Spawrious").split("_")
    if kind == "O2O":
        train, test, filler = O2O_BACKGROUNDS[level]
        environments = [[s for part in SPAWRIOUS_PARTS for s in _one_per_breed(part, test, None)]]
        for part, share in zip(SPAWRIOUS_PARTS, O2O_SHARES):
            correlated = int(share * per_folder)
            environments.append(_one_per_breed(part, train, correlated)
                                + _one_per_breed(part, [filler] * 4, per_folder - correlated))
        return environments
    train, test = M2M_BACKGROUNDS[level]
    part = SPAWRIOUS_PARTS[0]
    return [_one_per_breed(part, test, None) + _one_per_breed(part, _swap_pairs(test), None),
            _one_per_breed(part, train, per_folder),
            _one_per_breed(part, _swap_pairs(train), per_folder)]


class SpawriousEnvironment(Dataset):
    """One assembled environment: ``samples`` are ``(path, label)``; items are ``(PIL image, int)``."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return load_rgb_image(path), label


class SpawriousBenchmark(ImageDomainDataset):
    """Base of the six Spawrious datasets; the class name selects the backgrounds (see the module)."""

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None = None) -> None:
        super().__init__(root, test_envs, hparams)
        self.classes = list(SPAWRIOUS_CLASSES)
        self.num_classes = len(self.classes)
        self.sources = environment_sources(type(self).__name__)
        folders = list(dict.fromkeys(s.folder for env in self.sources for s in env))
        self.dataset_dir = self._resolve_dataset_dir(str(root), folders)
        files = {folder: self._list_images(folder, str(root)) for folder in folders}
        label = {name: index for index, name in enumerate(self.classes)}
        self.datasets = [
            SpawriousEnvironment([(path, label[s.class_name]) for s in env for path in files[s.folder][:s.limit]])
            for env in self.sources
        ]

    def geometric_augmentation(self) -> list:
        """DomainBed's Spawrious augmentation resizes (no random crop) before the flip and the colour one."""
        return [v2.Resize((self.image_size, self.image_size)), v2.RandomHorizontalFlip()]

    def _list_images(self, folder: str, root: str) -> list[str]:
        path = os.path.join(self.dataset_dir, *folder.split("/"))
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("."))
        if not names:
            raise ValueError(f"{type(self).__name__}: folder {path} contains no images (.png/.jpg/.jpeg); "
                             f"download it again: {self._download_hint(root)}")
        return [os.path.join(path, name) for name in names]

    def _resolve_dataset_dir(self, root: str, folders: Sequence[str]) -> str:
        """The folder holding the parts: ``root/spawrious224`` or ``root`` itself."""
        name = type(self).__name__
        candidates = [os.path.join(root, SPAWRIOUS_FOLDER), root]
        for candidate in candidates:
            if all(os.path.isdir(os.path.join(candidate, *f.split("/"))) for f in folders):
                return candidate
        for candidate in candidates:
            if any(os.path.isdir(os.path.join(candidate, part)) for part in SPAWRIOUS_PARTS):
                missing = [f for f in folders if not os.path.isdir(os.path.join(candidate, *f.split("/")))]
                shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                raise FileNotFoundError(f"{name} at {candidate} is missing folder(s) {shown}; "
                                        f"download it again: {self._download_hint(root)}")
        raise FileNotFoundError(
            f"{name} not found: expected {os.path.join(root, SPAWRIOUS_FOLDER)}/ with folders "
            f"{', '.join(SPAWRIOUS_PARTS)} (<part>/<background>/<class>/<image>); "
            f"download it: {self._download_hint(root)}")

    def _download_hint(self, root: str) -> str:
        """The download command; ``root`` given as the ``spawrious224`` folder means its parent is the data dir."""
        trimmed = os.path.normpath(root)
        is_dataset_folder = os.path.basename(trimmed) == SPAWRIOUS_FOLDER or any(
            os.path.isdir(os.path.join(root, part)) for part in SPAWRIOUS_PARTS)
        data_dir = (os.path.dirname(trimmed) or ".") if is_dataset_folder else root
        return f"python -m domainbed.scripts.download --data_dir {data_dir} --datasets {type(self).__name__}"


class SpawriousO2O_easy(SpawriousBenchmark):
    """One-to-one, easy: see ``O2O_BACKGROUNDS["easy"]``."""


class SpawriousO2O_medium(SpawriousBenchmark):
    """One-to-one, medium: see ``O2O_BACKGROUNDS["medium"]``."""


class SpawriousO2O_hard(SpawriousBenchmark):
    """One-to-one, hard: see ``O2O_BACKGROUNDS["hard"]``."""


class SpawriousM2M_easy(SpawriousBenchmark):
    """Many-to-many, easy: see ``M2M_BACKGROUNDS["easy"]``."""


class SpawriousM2M_medium(SpawriousBenchmark):
    """Many-to-many, medium: see ``M2M_BACKGROUNDS["medium"]``."""


class SpawriousM2M_hard(SpawriousBenchmark):
    """Many-to-many, hard: see ``M2M_BACKGROUNDS["hard"]``."""
