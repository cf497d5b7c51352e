"""Every dataset's names and defaults, in one place and without importing torch.

The one source of a dataset's environment names (DomainBed's table columns), its folder under
``--data_dir`` and its environment folders: the dataset classes read them (``DatasetInfo`` is
attached to each class by name), the download recipes read them, and the commands that only need
names (``sweep status``, ``collect_results``) read them without loading any data or library.
"""

from __future__ import annotations

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


def dataset_info(name: str) -> DatasetInfo:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def num_environments(name: str) -> int:
    """Number of environments of dataset ``name``, without loading any data."""
    return len(dataset_info(name).environments)


def check_test_envs(name: str, test_envs) -> list[int]:
    """The test environments as ints, or a ValueError naming the valid indices (the one check every
    command uses: train, sweep, evaluate)."""
    environments = dataset_info(name).environments
    test_envs = [int(env) for env in (test_envs or [])]
    valid = ", ".join(f"{i}={env}" for i, env in enumerate(environments))
    for env in test_envs:
        if not 0 <= env < len(environments):
            raise ValueError(f"test env {env} is out of range for {name}, which has {len(environments)} "
                             f"environments ({valid}); pass --test_envs with indices from that list")
    return test_envs
