"""The catalogue of downloads: each dataset's files, their origins, and how they become its folder.

One :class:`DatasetRecipe` per name accepted by ``--datasets``: its remote files (origins tried in
order; the mirror layout and the digest keys use the recipe name and the file name) and an
``assemble`` step that turns the downloaded files into the dataset folder (extract, find the
environments, regroup). Adding a dataset means adding a recipe here, and nothing in
:mod:`.transfer`, :mod:`.archives` or the top-level steps.

Every folder and environment name comes from :data:`domainbed.data.catalog.CATALOG`, which the
dataset classes read too, so a download always produces exactly the folders the loaders look
for. What stays spelled here is what belongs to the sources: URLs, Google Drive ids, file names
on the servers, names inside the archives, TerraIncognita's categories (:mod:`.regroup`) and
which DomainNet archives VisDA serves from ``groundtruth/``. A single-archive dataset's file is
stored (and mirrored) under DomainBed's name for it, ``<folder>.zip`` or ``<folder>.tar.gz``.

Recipes are built on demand (:func:`get_recipe`): MNIST's reads torchvision's list of mirrors
and MD5s, and importing this module must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..catalog import CATALOG, SPAWRIOUS_BACKGROUNDS, SPAWRIOUS_DATASETS, SPAWRIOUS_FOLDER, SPAWRIOUS_PARTS
from .archives import extract_archive, find_dataset_root
from .common import DownloadError
from .regroup import (TERRA_LOCATIONS, gunzip_files, regroup_terra_incognita, remove_listed_files,
                      terra_location_folder)
from .transfer import google_drive_url, mirror_url


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it comes from and the name it is stored (and mirrored) under."""

    filename: str
    origins: tuple[str, ...]  # tried in order
    md5: str | None = None  # published by the origin (torchvision's MNIST)
    optional: bool = False  # may be switched off with sources={filename: "none"}


@dataclass(frozen=True)
class DatasetRecipe:
    """How to turn downloaded files into ``data_dir/folder``.

    ``required`` are paths relative to the finished folder that must exist (the environments);
    ``assemble(staging, files)`` unpacks ``files`` (filename -> local path) inside ``staging``
    and returns the folder to move into place.
    """

    name: str
    folder: str
    required: tuple[str, ...]
    files: tuple[RemoteFile, ...]
    assemble: Callable[[Path, Mapping[str, Path]], Path]


DOMAINNET_DOMAINS = CATALOG["DomainNet"].environment_folders
DOMAINNET_DUPLICATES = "domain_net_duplicates.txt"
_VISDA = "http://csr.bu.edu/ftp/visda/2019/multi-source"
# VisDA serves these two domains' archives from groundtruth/ (the others from the top folder): a
# fact about the server's paths, and the only place the download code names DomainNet domains.
_VISDA_GROUNDTRUTH = ("clipart", "painting")
_LILA_HOSTS = ("https://storage.googleapis.com/public-datasets-lila/caltechcameratraps",
               "https://lilablobssc.blob.core.windows.net/caltechcameratraps")
_MNIST_FOLDER = CATALOG["ColoredMNIST"].folder  # shared by ColoredMNIST and RotatedMNIST


def _assemble_archives(staging: Path, files: Mapping[str, Path], required: Sequence[str]) -> Path:
    extracted = staging / "extracted"
    for path in files.values():
        extract_archive(path, extracted)
    return find_dataset_root(extracted, required)


def _single_archive_recipe(name: str, filename: str, origins: Sequence[str]) -> DatasetRecipe:
    """A dataset that is one archive holding its environment folders; ``{folder}`` in
    ``filename`` stands for the dataset's folder (DomainBed names its archives after it)."""
    info = CATALOG[name]
    envs = tuple(info.environment_folders)
    remote = RemoteFile(filename.format(folder=info.folder), tuple(origins))
    return DatasetRecipe(name, info.folder, envs, (remote,),
                         lambda staging, files: _assemble_archives(staging, files, envs))


def _assemble_domain_net(staging: Path, files: Mapping[str, Path]) -> Path:
    archives = {name: path for name, path in files.items() if name != DOMAINNET_DUPLICATES}
    root = _assemble_archives(staging, archives, DOMAINNET_DOMAINS)
    if DOMAINNET_DUPLICATES in files:
        removed = remove_listed_files(root, files[DOMAINNET_DUPLICATES])
        print(f"DomainNet: removed {removed} duplicate images")
    else:
        print("DomainNet: warning: duplicate images kept (no duplicates list); "
              "results will differ slightly from DomainBed's")
    return root


def _domain_net_recipe() -> DatasetRecipe:
    return DatasetRecipe(
        "DomainNet", CATALOG["DomainNet"].folder, DOMAINNET_DOMAINS,
        # The small duplicates list first: a broken link to it fails before 20 GB of zips.
        (RemoteFile(DOMAINNET_DUPLICATES, (
            "https://raw.githubusercontent.com/facebookresearch/DomainBed/main/"
            "domainbed/misc/domain_net_duplicates.txt",), optional=True),)
        + tuple(RemoteFile(f"{d}.zip", (f"{_VISDA}/groundtruth/{d}.zip" if d in _VISDA_GROUNDTRUTH
                                        else f"{_VISDA}/{d}.zip",))
                for d in DOMAINNET_DOMAINS),
        _assemble_domain_net)


def _assemble_terra_incognita(staging: Path, files: Mapping[str, Path]) -> Path:
    raw = staging / "raw"
    for path in files.values():
        extract_archive(path, raw)
    annotations = sorted(raw.rglob("*.json"))
    if not annotations:
        raise DownloadError("TerraIncognita: no annotation .json inside eccv_18_annotations.tar.gz")
    out = staging / CATALOG["TerraIncognita"].folder
    counts = regroup_terra_incognita(raw, annotations, out)
    print("TerraIncognita: regrouped "
          + ", ".join(f"{terra_location_folder(k)}: {v}" for k, v in counts.items()))
    return out


def _terra_incognita_recipe() -> DatasetRecipe:
    lila = lambda name: tuple(f"{host}/{name}" for host in _LILA_HOSTS)  # noqa: E731
    return DatasetRecipe(
        "TerraIncognita", CATALOG["TerraIncognita"].folder,
        tuple(terra_location_folder(loc) for loc in TERRA_LOCATIONS),
        (RemoteFile("eccv_18_annotations.tar.gz", lila("eccv_18_annotations.tar.gz")),
         RemoteFile("eccv_18_all_images_sm.tar.gz", lila("eccv_18_all_images_sm.tar.gz"))),
        _assemble_terra_incognita)


def _assemble_mnist(staging: Path, files: Mapping[str, Path]) -> Path:
    gunzip_files(files, staging / _MNIST_FOLDER / "raw")
    return staging / _MNIST_FOLDER


def _mnist_recipe() -> DatasetRecipe:
    # torchvision's own mirrors and md5s, so we download exactly what its MNIST class expects.
    from torchvision.datasets import MNIST

    files = tuple(RemoteFile(name, tuple(m + name for m in MNIST.mirrors), md5=md5)
                  for name, md5 in MNIST.resources)
    required = tuple("raw/" + f.filename.removesuffix(".gz") for f in files)
    return DatasetRecipe("MNIST", _MNIST_FOLDER, required, files, _assemble_mnist)


def _spawrious_recipe() -> DatasetRecipe:
    """One archive for all six Spawrious datasets (the six names are aliases of "Spawrious"):
    DomainBed stores it as spawrious.tar.gz and it unpacks to spawrious224/<part>/<background>/<class>/."""
    required = tuple(f"{part}/{background}" for part in SPAWRIOUS_PARTS for background in SPAWRIOUS_BACKGROUNDS)
    remote = RemoteFile("spawrious.tar.gz",
                        ("https://www.dropbox.com/s/e40j553480h3f3s/spawrious224.tar.gz?dl=1",))
    return DatasetRecipe("Spawrious", SPAWRIOUS_FOLDER, required, (remote,),
                         lambda staging, files: _assemble_archives(staging, files, required))


def _recipes() -> dict[str, Callable[[], DatasetRecipe]]:
    return {
        "VLCS": lambda: _single_archive_recipe(
            "VLCS", "{folder}.tar.gz", [google_drive_url("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8")]),
        "PACS": lambda: _single_archive_recipe(
            "PACS", "{folder}.zip", [google_drive_url("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd")]),
        "OfficeHome": lambda: _single_archive_recipe(
            "OfficeHome", "{folder}.zip", [google_drive_url("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC")]),
        "TerraIncognita": _terra_incognita_recipe,
        "DomainNet": _domain_net_recipe,
        "SVIRO": lambda: _single_archive_recipe(
            "SVIRO", "sviro_grayscale_rectangle_classification.zip",
            ["https://sviro.kl.dfki.de/?wpdmdl=1731"]),
        "MNIST": _mnist_recipe,
        "Spawrious": _spawrious_recipe,
    }


WILDS_DATASETS = {"WILDSCamelyon": "camelyon17", "WILDSFMoW": "fmow"}
ALIASES = {"ColoredMNIST": "MNIST", "RotatedMNIST": "MNIST", **{name: "Spawrious" for name in SPAWRIOUS_DATASETS}}
DEFAULT_DATASETS = tuple(_recipes())  # WILDS only when named: it needs the `wilds` package
DATASET_NAMES = DEFAULT_DATASETS + tuple(WILDS_DATASETS)


def get_recipe(name: str) -> DatasetRecipe:
    builders = _recipes()
    name = ALIASES.get(name, name)
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    return builders[name]()


def describe_files(mirror: str | None = None) -> list[str]:
    """One line per file: ``<Dataset>/<filename>  <url>`` (the mirror layout when mirror is given)."""
    lines = []
    for name in DEFAULT_DATASETS:
        recipe = get_recipe(name)
        for remote in recipe.files:
            url = mirror_url(mirror, name, remote.filename) if mirror else " | ".join(remote.origins)
            lines.append(f"{name}/{remote.filename}  {url}")
    return lines
