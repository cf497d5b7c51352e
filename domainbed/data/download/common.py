"""What every download step shares: the one error type and the copy block size.

Transfer, extraction, regrouping and the top-level steps all fail with :class:`DownloadError`,
whose message is one line written for the user (``domainbed.scripts.download`` prints it as
``error: ...`` without a traceback). It lives here, below every other module of the package, so
that none of them has to import another just to raise it.
"""

from __future__ import annotations

CHUNK_BYTES = 1 << 20  # read/write block for downloads, digests, extraction and decompression


class DownloadError(RuntimeError):
    """A download step failed; the message is one line written for the user."""
