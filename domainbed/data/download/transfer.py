"""Getting one file onto disk intact: HTTP with resume, Google Drive, retries, mirrors, digests.

Why this is more than ``urlretrieve``: DomainBed's links break in every way a link can (moved
Drive files, dead servers, cut connections, corrupt archives), so :func:`fetch` is the one
careful path every file takes:

* it streams into ``NAME.part`` with a progress bar and, after a cut connection, resumes with an
  HTTP ``Range`` request (a server that answers 200 instead of 206 restarts the file cleanly);
* it follows Google-Drive-style "can't scan this file for viruses" confirmation pages, and says
  so plainly when a web page arrives instead of the file (quota exceeded, file moved);
* it retries what is worth retrying (timeouts, 5xx, cut connections) with a growing pause, then
  moves on to the next origin, and names every URL and its failure reason if none worked;
* it checks the finished file's SHA-256 (and MD5 where the origin publishes one), deleting a
  file that does not match.

It knows nothing about datasets: the URLs (origins or :func:`mirror_url`) and the expected
digests come from the caller.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .common import CHUNK_BYTES, DownloadError

USER_AGENT = "domainbed-sfmoe-download/0.1 (+python-urllib)"


def google_drive_url(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def mirror_url(mirror: str, dataset: str, filename: str) -> str:
    """The mirror layout: ``<mirror>/<Dataset>/<filename>``."""
    return f"{mirror.rstrip('/')}/{dataset}/{urllib.parse.quote(filename)}"


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
