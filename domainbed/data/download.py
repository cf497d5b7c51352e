"""Fetch, verify and unpack the DomainBed datasets into the folders the loaders read.

Why a library and not a script of ``urlretrieve`` calls: DomainBed's links break (moved Drive
files, dead servers, corrupt archives), so every file goes through one careful path:

* streaming into ``NAME.part`` with a progress bar, resumed with an HTTP ``Range`` request after
  a cut connection (a server that answers 200 instead of 206 restarts the file cleanly);
* SHA-256 checked against :mod:`domainbed.data.known_digests` (a mismatch deletes the file and
  stops); the digest of any file not in that table is printed so it can be added;
* extraction that refuses archive entries which would land outside the target (absolute paths,
  ``..``, links and devices in tars, symlinks in zips);
* assembly in a temporary folder next to the target and one rename at the end, so a dataset
  folder is either complete (it holds a ``.complete`` marker) or absent. Complete datasets are
  skipped without any network request.

Layout under ``data_dir`` (what the loaders in :mod:`domainbed.datasets` read)::

    VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/<image>
    PACS/{art_painting,cartoon,photo,sketch}/<class>/<image>
    office_home/{Art,Clipart,Product,Real World}/<class>/<image>
    terra_incognita/location_{100,38,43,46}/<class>/<image>
    domain_net/{clipart,infograph,painting,quickdraw,real,sketch}/<class>/<image>
    sviro/{aclass,escape,hilux,i3,lexus,tesla,tiguan,tucson,x5,zoe}/<class>/<image>
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    .downloads/<Dataset>/<filename>   archives while in flight (removed unless keep_archives)

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
domain_net_duplicates.txt``, one path relative to ``domain_net/`` per line). That list is
fetched like any other file (origin: DomainBed's GitHub); ``sources={"domain_net_duplicates.txt":
PATH_OR_URL}`` points elsewhere, and ``"none"`` keeps the duplicates.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Sequence

from tqdm import tqdm

from .known_digests import KNOWN_SHA256

CACHE_DIR = ".downloads"
MARKER = ".complete"
CHUNK_BYTES = 1 << 20
USER_AGENT = "domainbed-sfmoe-download/0.1 (+python-urllib)"


class DownloadError(RuntimeError):
    """A download step failed; the message is one line written for the user."""


# --------------------------------------------------------------------------- recipes

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


def google_drive_url(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def mirror_url(mirror: str, dataset: str, filename: str) -> str:
    """The mirror layout: ``<mirror>/<Dataset>/<filename>``."""
    return f"{mirror.rstrip('/')}/{dataset}/{urllib.parse.quote(filename)}"


TERRA_LOCATIONS = ("38", "43", "46", "100")
TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
                    "raccoon", "squirrel")
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAINNET_DUPLICATES = "domain_net_duplicates.txt"
_VISDA = "http://csr.bu.edu/ftp/visda/2019/multi-source"
_LILA_HOSTS = ("https://storage.googleapis.com/public-datasets-lila/caltechcameratraps",
               "https://lilablobssc.blob.core.windows.net/caltechcameratraps")


def _assemble_archives(staging: Path, files: Mapping[str, Path], required: Sequence[str]) -> Path:
    extracted = staging / "extracted"
    for path in files.values():
        extract_archive(path, extracted)
    return find_dataset_root(extracted, required)


def _single_archive_recipe(name: str, folder: str, envs: Sequence[str], filename: str,
                           origins: Sequence[str]) -> DatasetRecipe:
    envs = tuple(envs)
    return DatasetRecipe(name, folder, envs, (RemoteFile(filename, tuple(origins)),),
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


def _assemble_terra_incognita(staging: Path, files: Mapping[str, Path]) -> Path:
    raw = staging / "raw"
    for path in files.values():
        extract_archive(path, raw)
    annotations = sorted(raw.rglob("*.json"))
    if not annotations:
        raise DownloadError("TerraIncognita: no annotation .json inside eccv_18_annotations.tar.gz")
    out = staging / "terra_incognita"
    counts = regroup_terra_incognita(raw, annotations, out)
    print("TerraIncognita: regrouped " + ", ".join(f"location_{k}: {v}" for k, v in counts.items()))
    return out


def _assemble_mnist(staging: Path, files: Mapping[str, Path]) -> Path:
    raw = staging / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for filename, path in files.items():
        with gzip.open(path, "rb") as src, open(raw / filename.removesuffix(".gz"), "wb") as dst:
            try:
                shutil.copyfileobj(src, dst, CHUNK_BYTES)
            except (OSError, EOFError) as error:
                raise DownloadError(f"{filename} is not a valid gzip file ({error})") from None
    return staging / "MNIST"


def _mnist_recipe() -> DatasetRecipe:
    # torchvision's own mirrors and md5s, so we download exactly what its MNIST class expects.
    from torchvision.datasets import MNIST

    files = tuple(RemoteFile(name, tuple(m + name for m in MNIST.mirrors), md5=md5)
                  for name, md5 in MNIST.resources)
    required = tuple("raw/" + f.filename.removesuffix(".gz") for f in files)
    return DatasetRecipe("MNIST", "MNIST", required, files, _assemble_mnist)


def _recipes() -> dict[str, Callable[[], DatasetRecipe]]:
    lila = lambda name: tuple(f"{host}/{name}" for host in _LILA_HOSTS)  # noqa: E731
    return {
        "VLCS": lambda: _single_archive_recipe(
            "VLCS", "VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"), "VLCS.tar.gz",
            [google_drive_url("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8")]),
        "PACS": lambda: _single_archive_recipe(
            "PACS", "PACS", ("art_painting", "cartoon", "photo", "sketch"), "PACS.zip",
            [google_drive_url("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd")]),
        "OfficeHome": lambda: _single_archive_recipe(
            "OfficeHome", "office_home", ("Art", "Clipart", "Product", "Real World"),
            "office_home.zip", [google_drive_url("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC")]),
        "TerraIncognita": lambda: DatasetRecipe(
            "TerraIncognita", "terra_incognita", tuple(f"location_{loc}" for loc in TERRA_LOCATIONS),
            (RemoteFile("eccv_18_annotations.tar.gz", lila("eccv_18_annotations.tar.gz")),
             RemoteFile("eccv_18_all_images_sm.tar.gz", lila("eccv_18_all_images_sm.tar.gz"))),
            _assemble_terra_incognita),
        "DomainNet": lambda: DatasetRecipe(
            "DomainNet", "domain_net", DOMAINNET_DOMAINS,
            # The small duplicates list first: a broken link to it fails before 20 GB of zips.
            (RemoteFile(DOMAINNET_DUPLICATES, (
                "https://raw.githubusercontent.com/facebookresearch/DomainBed/main/"
                "domainbed/misc/domain_net_duplicates.txt",), optional=True),)
            + tuple(RemoteFile(f"{d}.zip", (f"{_VISDA}/groundtruth/{d}.zip" if d in ("clipart", "painting")
                                            else f"{_VISDA}/{d}.zip",))
                    for d in DOMAINNET_DOMAINS),
            _assemble_domain_net),
        "SVIRO": lambda: _single_archive_recipe(
            "SVIRO", "sviro", ("aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan",
                               "tucson", "x5", "zoe"),
            "sviro_grayscale_rectangle_classification.zip", ["https://sviro.kl.dfki.de/?wpdmdl=1731"]),
        "MNIST": _mnist_recipe,
    }


WILDS_DATASETS = {"WILDSCamelyon": "camelyon17", "WILDSFMoW": "fmow"}
ALIASES = {"ColoredMNIST": "MNIST", "RotatedMNIST": "MNIST"}
DEFAULT_DATASETS = tuple(_recipes())  # WILDS only when named: it needs the `wilds` package
DATASET_NAMES = DEFAULT_DATASETS + tuple(WILDS_DATASETS)


def get_recipe(name: str) -> DatasetRecipe:
    builders = _recipes()
    name = ALIASES.get(name, name)
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    return builders[name]()


# --------------------------------------------------------------------------- fetching

class _Retryable(Exception):
    """A transfer that broke in a way worth resuming (cut connection, 5xx, timeout)."""


class _ConfirmPageParser(HTMLParser):
    """Collects the first form (action + named inputs) of a "can't scan for viruses" page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form" and self.action is None and attributes.get("action"):
            self.action, self._in_form = attributes["action"], True
        elif tag == "input" and self._in_form and attributes.get("name"):
            self.fields[attributes["name"]] = attributes.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _confirmation_url(page: str, page_url: str, cookies: CookieJar) -> str | None:
    """Where a Google-Drive-style warning page says the real file is, or None."""
    parser = _ConfirmPageParser()
    parser.feed(page)
    if parser.action is not None:
        action = urllib.parse.urljoin(page_url, parser.action)
        return action + ("&" if "?" in action else "?") + urllib.parse.urlencode(parser.fields)
    token = next((c.value for c in cookies if c.name.startswith("download_warning")), None)
    if token is None:
        match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
        token = match.group(1) if match else None
    if token is None:
        return None
    return re.sub(r"&confirm=[^&]*", "", page_url) + f"&confirm={token}"


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, http.client.IncompleteRead):
        return "connection closed before the end of the file"
    return str(error) or type(error).__name__


class _Transfer:
    """Downloads one URL into ``part``, appending to what is already there when the server allows."""

    def __init__(self, url: str, part: Path, progress: bool, timeout: float) -> None:
        self.url, self.part, self.progress, self.timeout = url, part, progress, timeout
        self.cookies = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def _open(self, url: str, offset: int):
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        for _ in range(3):  # a warning page, then the file
            response = self.opener.open(urllib.request.Request(url, headers=headers), timeout=self.timeout)
            if not response.headers.get("Content-Type", "").startswith("text/html"):
                return response
            with response:
                page = response.read(2 << 20).decode("utf-8", "replace")
            next_url = _confirmation_url(page, response.geturl(), self.cookies)
            if next_url is None:
                break
            url = next_url
        raise DownloadError("the server sent a web page instead of the file (for Google Drive: "
                            "download quota exceeded, or the file was moved or made private)")

    def run(self) -> None:
        offset = self.part.stat().st_size if self.part.exists() else 0
        try:
            response = self._open(self.url, offset)
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:  # asked past the end: the partial file may be whole
                total = error.headers.get("Content-Range", "").rpartition("/")[2]
                if total.isdigit() and int(total) == offset:
                    return
                self.part.unlink()
                raise _Retryable("server refused to resume; restarting") from None
            if error.code >= 500:
                raise _Retryable(_reason(error)) from None
            raise
        except urllib.error.URLError as error:
            if isinstance(error.reason, (ConnectionError, TimeoutError)):
                raise _Retryable(_reason(error)) from None
            raise
        except (ConnectionError, TimeoutError, http.client.RemoteDisconnected) as error:
            raise _Retryable(_reason(error)) from None
        with response:
            status = getattr(response, "status", None) or 200
            start = _content_range_start(response.headers.get("Content-Range"))
            if not (offset and status == 206 and start == offset):
                offset = 0  # no resume offered: start over cleanly
            remaining = response.headers.get("Content-Length")
            total = offset + int(remaining) if remaining and remaining.isdigit() else None
            with open(self.part, "ab" if offset else "wb") as out, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=self.part.name.removesuffix(".part"), disable=not self.progress,
                    leave=True) as bar:
                try:
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        bar.update(len(chunk))
                except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
                    raise _Retryable(_reason(error)) from None
        size = self.part.stat().st_size
        if total is not None and size != total:
            raise _Retryable(f"connection closed after {size} of {total} bytes")


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", value or "")
    return int(match.group(1)) if match else None


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) hex digests of a file, read once."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def verify(path: Path, sha256: str | None = None, md5: str | None = None) -> str:
    """Return the file's SHA-256; on a mismatch delete the file and raise DownloadError."""
    actual_sha256, actual_md5 = file_digests(path)
    for kind, expected, actual in (("sha256", sha256, actual_sha256), ("md5", md5, actual_md5)):
        if expected and expected.lower() != actual:
            path.unlink()
            raise DownloadError(f"{kind} mismatch for {path.name} (expected {expected}, got {actual}); "
                                "the file was deleted (corrupt or changed at the source)")
    return actual_sha256


def fetch(urls: Sequence[str], dest: Path, *, sha256: str | None = None, md5: str | None = None,
          attempts: int = 4, retry_wait: float = 2.0, progress: bool = True,
          timeout: float = 60.0) -> str:
    """Download ``dest`` from the first of ``urls`` that works; return its SHA-256.

    A complete ``dest`` is only verified. An interrupted transfer leaves ``dest.part``, which the
    next attempt (or the next run) resumes with a Range request.
    """
    dest = Path(dest)
    if dest.exists():
        return verify(dest, sha256, md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = []
    for index, url in enumerate(urls):
        if index:  # a partial file from another host may not be the same file
            part.unlink(missing_ok=True)
        for attempt in range(attempts):
            try:
                _Transfer(url, part, progress, timeout).run()
            except _Retryable as error:
                reason = str(error)
                if attempt + 1 < attempts:
                    time.sleep(retry_wait * (attempt + 1))
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError, DownloadError) as error:
                reason = _reason(error)
                break
            os.replace(part, dest)
            return verify(dest, sha256, md5)
        failures.append(f"{url} ({reason})")
    raise DownloadError("could not download " + "; ".join(failures))


# --------------------------------------------------------------------------- extraction

def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DownloadError(f"archive entry {name!r} would be written outside the target; "
                            "refusing the archive")
    return path


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # check everything before writing anything
            _safe_relative(info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise DownloadError(f"archive entry {info.filename!r} is a symlink; refusing the archive")
        for info in members:
            target = dest / _safe_relative(info.filename)
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
            target = dest / _safe_relative(member.name)
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


# --------------------------------------------------------------------------- dataset steps

def regroup_terra_incognita(image_root: Path, annotation_files: Sequence[Path], out_dir: Path, *,
                            locations: Iterable[str] = TERRA_LOCATIONS,
                            categories: Iterable[str] = TERRA_CATEGORIES) -> dict[str, int]:
    """Move camera-trap images into ``out_dir/location_<loc>/<category>/`` from COCO-style JSONs.

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
            source = Path(image_root) / _safe_relative(image["file_name"])
            source = source if source.is_file() else by_name.get(name)
            if source is None or not source.is_file():
                continue
            target = Path(out_dir) / f"location_{location}" / category / name
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
        path = Path(root) / _safe_relative(line)
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


# --------------------------------------------------------------------------- top level

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
        status = "verified" if key in digests else "new, add it to domainbed/data/known_digests.py"
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


def describe_files(mirror: str | None = None) -> list[str]:
    """One line per file: ``<Dataset>/<filename>  <url>`` (the mirror layout when mirror is given)."""
    lines = []
    for name in DEFAULT_DATASETS:
        recipe = get_recipe(name)
        for remote in recipe.files:
            url = mirror_url(mirror, name, remote.filename) if mirror else " | ".join(remote.origins)
            lines.append(f"{name}/{remote.filename}  {url}")
    return lines
