"""Every dataset's names and defaults, in one place and without importing torch.

The one source of a dataset's environment names (DomainBed's table columns), its folder under
``--data_dir`` and its environment folders: the dataset classes read them (``DatasetInfo`` is
attached to each class by name), the download recipes read them, and the commands that only need
names (``sweep status``, ``collect_results``) read them without loading any data or library.

Any other name is a dataset of the user's own images when ``--data_dir`` holds a folder of that
name laid out as ``<data_dir>/<name>/<domain>/<class>/<image>``: ``describe_folder_dataset`` reads
its names from the folders (domains sorted, as DomainBed's image-folder datasets), and the lookups
below (``dataset_info``, ``num_environments``, ``check_test_envs``) find it given the ``data_dir``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    environments: tuple[str, ...]            # short names, in environment order
    folder: str | None = None                # folder under --data_dir (None: embedded, or a package's)
    environment_folders: tuple[str, ...] = ()  # one per environment, sorted like the environments
    n_steps: int = 5001                      # DomainBed's default training steps
    checkpoint_freq: int = 100               # DomainBed's default steps between checkpoints
    image_size: int = 224                    # the image_size hparam's default (native size of tensor data)
    shuffled_environments: bool = False      # environments drawn from one shuffled pool, per trial


_DIGITS_ANGLES = ("0", "15", "30", "45", "60", "75")
_COLOURS = ("+90%", "+80%", "-90%")
_SVIRO = ("aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe")

# Spawrious (Lynch et al., 2023): environments are assembled from <part>/<background>/<class>/ folders
# (domainbed/data/spawrious.py), so its entries have no environment folders; these are its folder names.
SPAWRIOUS_FOLDER = "spawrious224"  # what DomainBed's archive (spawrious224.tar.gz) unpacks to
SPAWRIOUS_PARTS = ("0", "1")  # two disjoint halves of the images, each <background>/<class>/<image>
SPAWRIOUS_BACKGROUNDS = ("beach", "desert", "dirt", "jungle", "mountain", "snow")
SPAWRIOUS_CLASSES = ("bulldog", "corgi", "dachshund", "labrador")  # label order (DomainBed's class_list)
SPAWRIOUS_ENVIRONMENTS = ("Test", "SC_group_1", "SC_group_2")  # env 0 is the test env: --test_envs 0
SPAWRIOUS_DATASETS = tuple(f"Spawrious{kind}_{level}" for kind in ("O2O", "M2M")
                           for level in ("easy", "medium", "hard"))

CATALOG: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("Debug28", ("0", "1", "2"), image_size=28),
    DatasetInfo("Debug224", ("0", "1", "2")),
    DatasetInfo("ColoredMNIST", _COLOURS, folder="MNIST", image_size=28, shuffled_environments=True),
    DatasetInfo("RotatedMNIST", _DIGITS_ANGLES, folder="MNIST", image_size=28, shuffled_environments=True),
    DatasetInfo("VLCS", ("C", "L", "S", "V"), "VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
                checkpoint_freq=300),
    DatasetInfo("PACS", ("A", "C", "P", "S"), "PACS", ("art_painting", "cartoon", "photo", "sketch"),
                checkpoint_freq=300),
    DatasetInfo("OfficeHome", ("A", "C", "P", "R"), "office_home", ("Art", "Clipart", "Product", "Real World"),
                checkpoint_freq=300),
    DatasetInfo("TerraIncognita", ("L100", "L38", "L43", "L46"), "terra_incognita",
                ("location_100", "location_38", "location_43", "location_46"), checkpoint_freq=300),
    DatasetInfo("DomainNet", ("clip", "info", "paint", "quick", "real", "sketch"), "domain_net",
                ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), checkpoint_freq=1000),
    DatasetInfo("SVIRO", _SVIRO, "sviro", _SVIRO, checkpoint_freq=300),
    DatasetInfo("WILDSCamelyon", tuple(f"hospital_{i}" for i in range(5))),
    DatasetInfo("WILDSFMoW", tuple(f"region_{i}" for i in range(6))),
    *(DatasetInfo(name, SPAWRIOUS_ENVIRONMENTS, SPAWRIOUS_FOLDER) for name in SPAWRIOUS_DATASETS),
    DatasetInfo("RotatedDigits", _DIGITS_ANGLES, image_size=32, shuffled_environments=True),
    DatasetInfo("ColoredDigits", _COLOURS, image_size=32, shuffled_environments=True),
)}

DATASETS: list[str] = list(CATALOG)


# ---------------------------------------------------------------------- datasets of the user's own images

# DomainBed's defaults for its image-folder datasets (VLCS, PACS, OfficeHome, TerraIncognita, SVIRO):
# 5001 steps and 224-pixel images are DatasetInfo's defaults; a checkpoint every 300 steps.
FOLDER_DATASET_CHECKPOINT_FREQ = 300

# Folder datasets being built (``building_folder_dataset``), by name: the only ones a look-up without
# a data_dir finds. Nothing else is remembered, so every command passes its data_dir.
_BUILDING: dict[str, DatasetInfo] = {}


def folder_layout(name: str, data_dir: str | None = None) -> str:
    """Where a dataset of one's own images goes: ``<data_dir>/<name>/<domain>/<class>/<image>``."""
    return f"{data_dir if data_dir is not None else '<data_dir>'}/{name}/<domain>/<class>/<image>"


def folder_dataset_dir(data_dir: str, name: str) -> str | None:
    """The folder holding the domain folders of dataset ``name``: ``data_dir/name``, or ``data_dir``
    itself when it is named ``name`` (as for the built-in image datasets); None when neither exists."""
    if not name or name in (".", "..") or any(sep and sep in name for sep in ("/", os.sep, os.altsep)):
        return None
    for candidate in (os.path.join(data_dir, name), data_dir):
        if os.path.basename(os.path.normpath(candidate)) == name and os.path.isdir(candidate):
            return candidate
    return None


def describe_folder_dataset(data_dir: str, name: str) -> DatasetInfo | None:
    """The names of dataset ``name`` of one's own images under ``data_dir``: its environments are
    its domain folders, sorted; DomainBed's image-dataset defaults. None when there is no such
    folder; a one-line ValueError when it has fewer than two domain folders. Lists one folder only
    (what is inside each domain is the dataset class's to check)."""
    dataset_dir = folder_dataset_dir(data_dir, name)
    if dataset_dir is None:
        return None
    try:
        domains = tuple(sorted(entry.name for entry in os.scandir(dataset_dir)
                               if entry.is_dir() and not entry.name.startswith(".")))
    except OSError as error:
        raise ValueError(f"cannot list the domain folders of dataset {name!r} in {dataset_dir} ({error})") from None
    if len(domains) < 2:
        found = f"only {domains[0]!r}" if domains else "none"
        raise ValueError(f"dataset {name!r} at {dataset_dir} needs at least 2 domain folders, found {found}; "
                         f"lay out your images as {folder_layout(name, data_dir)}")
    return DatasetInfo(name, domains, folder=name, environment_folders=domains,
                       checkpoint_freq=FOLDER_DATASET_CHECKPOINT_FREQ)


@contextlib.contextmanager
def building_folder_dataset(info: DatasetInfo):
    """Within the block, ``dataset_info(info.name)`` without a data_dir is ``info``: the dataset
    classes' base checks test envs by the class's name alone, and a folder dataset's class is named
    like it (``image_folders.FolderDataset``)."""
    previous = _BUILDING.get(info.name)
    _BUILDING[info.name] = info
    try:
        yield
    finally:
        if previous is None:
            del _BUILDING[info.name]
        else:
            _BUILDING[info.name] = previous


def unknown_dataset_message(name: str, data_dir: str | None = None) -> str:
    """One line: the known datasets, and where one's own images would make ``name`` a dataset."""
    return (f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}; "
            f"or put your own images in {folder_layout(name, data_dir)} files")


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """The names and defaults of dataset ``name``: a built-in one, else the folder ``name`` of one's
    own images under ``data_dir``. ValueError (one line) naming the known datasets and the folder
    layout otherwise."""
    info = CATALOG.get(name)
    if info is None:
        info = _BUILDING.get(name) if data_dir is None else describe_folder_dataset(data_dir, name)
    if info is None:
        raise ValueError(unknown_dataset_message(name, data_dir))
    return info


def num_environments(name: str, data_dir: str | None = None) -> int:
    """Number of environments of dataset ``name``, without loading any data."""
    return len(dataset_info(name, data_dir).environments)


def check_test_envs(name: str, test_envs, data_dir: str | None = None) -> list[int]:
    """The test environments as ints, or a ValueError naming the valid indices (the one check every
    command uses: train, sweep, evaluate)."""
    environments = dataset_info(name, data_dir).environments
    test_envs = [int(env) for env in (test_envs or [])]
    valid = ", ".join(f"{i}={env}" for i, env in enumerate(environments))
    for env in test_envs:
        if not 0 <= env < len(environments):
            raise ValueError(f"test env {env} is out of range for {name}, which has {len(environments)} "
                             f"environments ({valid}); pass --test_envs with indices from that list")
    return test_envs
