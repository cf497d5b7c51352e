"""Installing datasets into ``data_dir``: the steps around the recipes, and the only ones that
touch the data folder itself.

Why a module of its own: whatever the dataset, the same guarantees hold, and they are kept here
once rather than in each recipe:

* a dataset folder is either complete or absent: the recipe assembles it in a temporary
  ``.<folder>.partial-*`` folder next to the target, which gets a ``.complete`` marker and is
  moved into place with one rename (leftovers of a killed run are removed on the next one);
* a complete dataset (marker, or every environment present for a folder laid out by hand) is
  skipped without any network request; an incomplete one is never overwritten;
* files are fetched into ``data_dir/.downloads/<Dataset>/`` (where one saved by hand is used as
  if downloaded), checked against :mod:`.known_digests`, and deleted when the archives turn out
  to be unusable, so that a rerun fetches them again;
* every failure is one :class:`DownloadError` line naming the dataset, the reason and how to do
  the step by hand.

WILDS datasets are handed to the ``wilds`` package, which has its own downloader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from .common import DownloadError
from .known_digests import KNOWN_SHA256
from .recipes import ALIASES, WILDS_DATASETS, DatasetRecipe, get_recipe
from .transfer import fetch, mirror_url

CACHE_DIR = ".downloads"
MARKER = ".complete"


def is_complete(data_dir: Path, recipe: DatasetRecipe) -> bool:
    """Marker written by us, or every required path present (a folder laid out by hand)."""
    target = Path(data_dir) / recipe.folder
    if (target / MARKER).is_file():
        return True
    return all((target / r).is_file() or ((target / r).is_dir() and any((target / r).iterdir()))
               for r in recipe.required)


def _by_hand(data_dir: Path, recipe: DatasetRecipe, filename: str | None) -> str:
    layout = f"{Path(data_dir) / recipe.folder}/{{{','.join(recipe.required)}}}"
    layout += "" if recipe.name == "MNIST" else "/<class>/<image>"
    save = (f"save the file as {Path(data_dir) / CACHE_DIR / recipe.name / filename} and rerun, or "
            if filename else "")
    return f"By hand: {save}lay out {layout}."


def _remove_empty_dirs(*folders: Path) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def download_dataset(name: str, data_dir: str | Path, *, mirror: str | None = None,
                     sources: Mapping[str, str] | None = None, digests: Mapping[str, str] | None = None,
                     keep_archives: bool = False, progress: bool = True, attempts: int = 4,
                     retry_wait: float = 2.0) -> Path:
    """Download, verify and lay out one dataset under ``data_dir``; return its folder.

    ``sources`` overrides single files (filename -> local path or URL; ``"none"`` skips an
    optional file); ``digests`` defaults to :data:`known_digests.KNOWN_SHA256`.
    """
    data_dir = Path(data_dir)
    if name in WILDS_DATASETS:
        return _download_wilds(name, data_dir, mirror)
    recipe = get_recipe(name)
    target = data_dir / recipe.folder
    if is_complete(data_dir, recipe):
        print(f"{recipe.name}: already complete at {target}")
        return target
    if target.exists():
        raise DownloadError(f"{recipe.name}: {target} exists but is incomplete (it needs "
                            f"{', '.join(recipe.required)}); move it away or complete it by hand, then rerun")
    digests = KNOWN_SHA256 if digests is None else digests
    sources = sources or {}
    cache = data_dir / CACHE_DIR / recipe.name
    for stale in data_dir.glob(f".{recipe.folder}.partial-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)

    local: dict[str, Path] = {}
    shas: dict[str, str] = {}
    for remote in recipe.files:
        source = sources.get(remote.filename)
        if source == "none" and remote.optional:
            continue
        key = f"{recipe.name}/{remote.filename}"
        dest = cache / remote.filename
        if source and "://" not in source:
            if not Path(source).is_file():
                raise FileNotFoundError(f"{recipe.name}: {source} (given for {remote.filename}) "
                                        "does not exist")
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
        urls = ((source,) if source else
                (mirror_url(mirror, recipe.name, remote.filename),) if mirror else remote.origins)
        try:
            shas[remote.filename] = fetch(urls, dest, sha256=digests.get(key), md5=remote.md5,
                                          attempts=attempts, retry_wait=retry_wait, progress=progress)
        except DownloadError as error:
            _remove_empty_dirs(cache, cache.parent)
            optional = (" This file is optional (--domainnet_duplicates none skips it)."
                        if remote.optional else "")
            raise DownloadError(f"{recipe.name}: {error}. {_by_hand(data_dir, recipe, remote.filename)}"
                                f"{optional}") from None
        status = ("verified" if key in digests
                  else "new, add it to domainbed/data/download/known_digests.py")
        print(f"sha256 {shas[remote.filename]}  {key}  ({status})")
        local[remote.filename] = dest

    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.folder}.partial-", dir=data_dir))
    try:
        try:
            root = recipe.assemble(staging, local)
        except DownloadError as error:  # the archives' fault: drop them so a rerun fetches again
            for path in local.values():
                path.unlink(missing_ok=True)
            _remove_empty_dirs(cache, cache.parent)
            raise DownloadError(f"{recipe.name}: {error}; the downloaded files were deleted. "
                                f"{_by_hand(data_dir, recipe, None)}") from None
        missing = [r for r in recipe.required if not (root / r).exists()]
        if missing:
            raise DownloadError(f"{recipe.name}: assembled folder lacks {', '.join(missing)}")
        (root / MARKER).write_text(json.dumps({"dataset": recipe.name, "sha256": shas}, indent=1))
        os.replace(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        for path in local.values():
            path.unlink(missing_ok=True)
        _remove_empty_dirs(cache, cache.parent)
    print(f"{recipe.name}: ready at {target}")
    return target


def _download_wilds(name: str, data_dir: Path, mirror: str | None) -> Path:
    try:
        import wilds
    except ImportError:
        raise DownloadError(f"{name} is downloaded by the `wilds` package, which is not installed: "
                            "pip install wilds (or pip install '.[wilds]'), then rerun") from None
    if mirror:
        print(f"{name}: warning: --mirror does not apply to WILDS; using the wilds package's servers")
    try:
        wilds.get_dataset(dataset=WILDS_DATASETS[name], root_dir=str(data_dir), download=True)
    except Exception as error:  # wilds raises assorted types; the user needs one line
        raise DownloadError(f"{name}: the wilds package failed ({error}); see "
                            "https://wilds.stanford.edu/datasets/ for manual download") from None
    return data_dir


def download_datasets(names: Sequence[str], data_dir: str | Path, **kwargs) -> list[Path]:
    """Download several datasets in order (duplicates such as ColoredMNIST + MNIST once)."""
    for name in names:
        if name not in WILDS_DATASETS:
            get_recipe(name)  # reject unknown names before any download starts
    unique = list(dict.fromkeys(ALIASES.get(n, n) for n in names))
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    return [download_dataset(name, data_dir, **kwargs) for name in unique]
