"""Unpacking downloaded archives safely, and finding the dataset inside what they unpack to.

Why not ``extractall``: the archives come from the network (and from mirrors anyone can run), so
an entry must never land outside the target folder. :func:`extract_archive` refuses the whole
archive on an absolute path, a ``..`` component or a drive letter, on links and device files in
tars and on symlinks in zips; zips are checked entirely before anything is written, tars are
read in one sequential pass (fast for ``.tar.gz``) and the caller discards the partial folder.
:func:`safe_relative` is the same check for any other path that comes from the network (the
DomainNet duplicates list, TerraIncognita's annotation files).

:func:`find_dataset_root` exists because archives wrap the environment folders differently (PACS
in ``kfold/``, OfficeHome in ``OfficeHomeDataset_10072016/``, ...), and mirrors may repack them.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from .common import CHUNK_BYTES, DownloadError


def safe_relative(name: str) -> PurePosixPath:
    """``name`` as a relative path, or DownloadError if it would leave the folder it is joined to."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DownloadError(f"archive entry {name!r} would be written outside the target; "
                            "refusing the archive")
    return path


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # check everything before writing anything
            safe_relative(info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise DownloadError(f"archive entry {info.filename!r} is a symlink; refusing the archive")
        for info in members:
            target = dest / safe_relative(info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK_BYTES)


def _extract_tar(archive: Path, dest: Path) -> None:
    # Sequential pass (fast for .tar.gz); a refused entry aborts, and the caller discards ``dest``.
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            target = dest / safe_relative(member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
            else:
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise DownloadError(f"archive entry {member.name!r} is a {kind}; refusing the archive")


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) into ``dest``, refusing entries that escape it."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        else:
            raise DownloadError(f"{archive.name} is neither a zip nor a tar archive "
                                "(corrupt, or an error page?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, gzip.BadGzipFile) as error:
        raise DownloadError(f"{archive.name} is corrupt ({error})") from None


def find_dataset_root(search_dir: Path, required: Sequence[str], max_depth: int = 4) -> Path:
    """The shallowest folder under ``search_dir`` holding every path in ``required``.

    Archives wrap the environments differently (PACS in ``kfold/``, OfficeHome in
    ``OfficeHomeDataset_10072016/``, SVIRO in ``SVIRO_DOMAINBED/``); searching tolerates that
    and mirrors that repack them.
    """
    level = [Path(search_dir)]
    for _ in range(max_depth + 1):
        for folder in level:
            if all((folder / r).exists() for r in required):
                return folder
        level = sorted(p for folder in level for p in folder.iterdir() if p.is_dir())
    raise DownloadError(f"the archive does not contain the folders {', '.join(required)}")
