"""The per-dataset steps between "archives extracted" and "folder the loaders read".

Most datasets only need their archive unpacked; three need files moved, deleted or decompressed:

* TerraIncognita ships one pile of camera-trap images plus COCO-style annotation JSONs;
  :func:`regroup_terra_incognita` sorts the images into one folder per camera location and
  category, as DomainBed's loader expects;
* DomainNet contains duplicate images that DomainBed deletes from a published list;
  :func:`remove_listed_files` applies such a list;
* MNIST comes as gzipped IDX files that torchvision reads decompressed; :func:`gunzip_files`.

They sit apart from the recipes because they act on individual files named by data from the
network: every such path goes through :func:`.archives.safe_relative`, and each step can be
repeated on a half-done folder. The location folders are named by the catalogue
(``CATALOG["TerraIncognita"].environment_folders``); the category list is TerraIncognita's own
(DomainBed's ten classes) and stays here.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from ..catalog import CATALOG
from .archives import safe_relative
from .common import CHUNK_BYTES, DownloadError

TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
                    "raccoon", "squirrel")


def _location_folder_scheme(folders: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Split the catalogue's location folders into their common prefix and the location ids the
    annotations use (``"38"``), the ids in numeric order."""
    parts = [re.fullmatch(r"(\D*)(\d+)", folder) for folder in folders]
    prefixes = {match.group(1) for match in parts if match}
    if None in parts or len(prefixes) != 1:
        raise ValueError(f"TerraIncognita environment folders {folders} are not <prefix><location id>")
    return prefixes.pop(), tuple(sorted((match.group(2) for match in parts), key=lambda s: (len(s), s)))


_LOCATION_PREFIX, TERRA_LOCATIONS = _location_folder_scheme(CATALOG["TerraIncognita"].environment_folders)


def terra_location_folder(location: str) -> str:
    """The environment folder of camera-trap location ``location`` (an annotation's id, e.g. "38")."""
    return f"{_LOCATION_PREFIX}{location}"


def regroup_terra_incognita(image_root: Path, annotation_files: Sequence[Path], out_dir: Path, *,
                            locations: Iterable[str] = TERRA_LOCATIONS,
                            categories: Iterable[str] = TERRA_CATEGORIES) -> dict[str, int]:
    """Move camera-trap images into ``out_dir/<location folder>/<category>/`` from COCO-style JSONs
    (the location folder as :func:`terra_location_folder` names it).

    Each JSON has ``images`` (id, file_name, location), ``annotations`` (image_id, category_id)
    and ``categories`` (id, name). Images of other locations or categories are left out; an
    image annotated more than once takes its first annotation's category. Images are looked up
    by path under ``image_root``, else by file name anywhere below it. Returns images per location.
    """
    locations, categories = {str(loc) for loc in locations}, set(categories)
    by_name: dict[str, Path] = {}
    for path in Path(image_root).rglob("*"):
        if path.is_file() and path.suffix.lower() != ".json":
            by_name.setdefault(path.name, path)
    counts = {loc: 0 for loc in sorted(locations, key=lambda s: (len(s), s))}
    placed: set[str] = set()
    for annotation_file in annotation_files:
        with open(annotation_file) as f:
            coco = json.load(f)
        category_names = {c["id"]: c["name"] for c in coco["categories"]}
        category_of: dict = {}
        for annotation in coco["annotations"]:
            category_of.setdefault(annotation["image_id"], category_names.get(annotation["category_id"]))
        for image in coco["images"]:
            location, category = str(image.get("location")), category_of.get(image["id"])
            name = PurePosixPath(image["file_name"]).name
            if location not in locations or category not in categories or name in placed:
                continue
            source = Path(image_root) / safe_relative(image["file_name"])
            source = source if source.is_file() else by_name.get(name)
            if source is None or not source.is_file():
                continue
            target = Path(out_dir) / terra_location_folder(location) / category / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            placed.add(name)
            counts[location] += 1
    if not placed:
        raise DownloadError("TerraIncognita: no annotated image of the selected locations was found "
                            "in the images archive")
    return counts


def remove_listed_files(root: Path, listing: Path) -> int:
    """Delete the files named in ``listing`` (one path relative to ``root`` per line); return the count.

    Missing files are skipped so the step can be repeated; lines that point outside ``root`` are
    refused because the list comes from the network.
    """
    removed = 0
    for line in Path(listing).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(root) / safe_relative(line)
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


def gunzip_files(files: Mapping[str, Path], out_dir: Path) -> None:
    """Decompress each ``filename.gz -> path`` of ``files`` into ``out_dir/filename`` (created here)."""
    out_dir.mkdir(parents=True)
    for filename, path in files.items():
        with gzip.open(path, "rb") as src, open(out_dir / filename.removesuffix(".gz"), "wb") as dst:
            try:
                shutil.copyfileobj(src, dst, CHUNK_BYTES)
            except (OSError, EOFError) as error:
                raise DownloadError(f"{filename} is not a valid gzip file ({error})") from None
