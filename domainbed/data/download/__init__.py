"""Fetch, verify and unpack the DomainBed datasets into the folders the loaders read.

Why a library and not a script of ``urlretrieve`` calls: DomainBed's links break (moved Drive
files, dead servers, corrupt archives), so every file goes through one careful path:

* streaming into ``NAME.part`` with a progress bar, resumed with an HTTP ``Range`` request after
  a cut connection (a server that answers 200 instead of 206 restarts the file cleanly);
* SHA-256 checked against :mod:`.known_digests` (a mismatch deletes the file and stops); the
  digest of any file not in that table is printed so it can be added;
* extraction that refuses archive entries which would land outside the target (absolute paths,
  ``..``, links and devices in tars, symlinks in zips);
* assembly in a temporary folder next to the target and one rename at the end, so a dataset
  folder is either complete (it holds a ``.complete`` marker) or absent. Complete datasets are
  skipped without any network request.

The package, one concern per module (each module's docstring says why it is separate):

* :mod:`.transfer`: getting one file intact (resume, Google Drive pages, retries, digests);
* :mod:`.archives`: safe zip/tar extraction, and finding the dataset root inside it;
* :mod:`.recipes`: what each dataset needs (files, origins) and how its folder is assembled;
* :mod:`.regroup`: the per-dataset file steps (TerraIncognita by location, DomainNet
  duplicates, MNIST decompression);
* :mod:`.install`: the top level (cache, staging, marker, skip-if-complete, WILDS);
* :mod:`.known_digests`: the table of expected SHA-256 digests;
* :mod:`.common`: :class:`DownloadError`, which every step raises.

This module only re-exports their public names; ``domainbed.scripts.download`` (the command) and
the tests use them from here. Nothing here imports torch (MNIST's recipe reads torchvision only
when it is built).

Layout under ``data_dir`` (what the loaders in :mod:`domainbed.datasets` read). The folder and
environment folder names are ``CATALOG[name].folder`` and ``CATALOG[name].environment_folders``
of :mod:`domainbed.data.catalog`, the one place they are spelled::

    <folder>/<environment folder>/<class>/<image>   VLCS, PACS, OfficeHome, TerraIncognita,
                                                    DomainNet, SVIRO
    <folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte   MNIST (ColoredMNIST, RotatedMNIST)
    .downloads/<Dataset>/<filename>   archives while in flight (removed unless keep_archives)

A failed download prints the exact layout of its dataset.

Mirrors: with ``mirror=URL`` every file, Google Drive ones included, is fetched from
``URL/<Dataset>/<filename>`` instead of its origin, where ``<Dataset>`` is the name passed to
``--datasets`` (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet, SVIRO, MNIST) and
``<filename>`` is listed by ``python -m domainbed.scripts.download --list``. Any scheme urllib
opens works (``https://``, ``http://``, ``file:///``). WILDS datasets are fetched by the
``wilds`` package itself and ignore the mirror.

By hand: a file saved as ``data_dir/.downloads/<Dataset>/<filename>`` is used as if downloaded
(and verified when its digest is known); a dataset folder laid out as above with every
environment present is accepted as complete.

DomainNet: DomainBed deletes a list of duplicate images (its ``domainbed/misc/
domain_net_duplicates.txt``, one path relative to the DomainNet folder per line). That list is
fetched like any other file (origin: DomainBed's GitHub); ``sources={"domain_net_duplicates.txt":
PATH_OR_URL}`` points elsewhere, and ``"none"`` keeps the duplicates.
"""

from __future__ import annotations

from . import known_digests
from .archives import extract_archive, find_dataset_root, safe_relative
from .common import CHUNK_BYTES, DownloadError
from .install import (CACHE_DIR, MARKER, download_dataset, download_datasets, is_complete)
from .recipes import (ALIASES, DATASET_NAMES, DEFAULT_DATASETS, DOMAINNET_DOMAINS, DOMAINNET_DUPLICATES,
                      WILDS_DATASETS, DatasetRecipe, RemoteFile, describe_files, get_recipe)
from .regroup import (TERRA_CATEGORIES, TERRA_LOCATIONS, gunzip_files, regroup_terra_incognita,
                      remove_listed_files, terra_location_folder)
from .transfer import USER_AGENT, fetch, file_digests, google_drive_url, mirror_url, verify

__all__ = [
    # the command's and the tests' entry points
    "download_datasets", "download_dataset", "describe_files", "DownloadError",
    "DEFAULT_DATASETS", "DATASET_NAMES", "DOMAINNET_DUPLICATES", "known_digests",
    # the steps, for callers that need one of them
    "fetch", "verify", "file_digests", "google_drive_url", "mirror_url", "USER_AGENT",
    "extract_archive", "find_dataset_root", "safe_relative",
    "regroup_terra_incognita", "remove_listed_files", "gunzip_files", "terra_location_folder",
    "RemoteFile", "DatasetRecipe", "get_recipe", "is_complete",
    "ALIASES", "WILDS_DATASETS", "DOMAINNET_DOMAINS", "TERRA_LOCATIONS", "TERRA_CATEGORIES",
    "CACHE_DIR", "MARKER", "CHUNK_BYTES",
]
