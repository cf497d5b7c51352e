"""SHA-256 digests of the dataset files, keyed by ``"<Dataset>/<filename>"``.

Why a table: DomainBed's sources move and get re-uploaded, and users report corrupt archives; a
known digest turns "training crashed on a truncated JPEG hours later" into "download refused".

How to fill it: run ``python -m domainbed.scripts.download`` once from a source you trust. For
every file that has no entry here it prints a line ``sha256 <hex>  <Dataset>/<filename>``; copy
those pairs below. The key is the file's path under a ``--mirror`` (see
:mod:`domainbed.data.download`), e.g. ``"PACS/PACS.zip"``. A listed file that does not match is
deleted and the download stops; files without an entry are accepted and their digest printed.
"""

KNOWN_SHA256: dict[str, str] = {
    # "PACS/PACS.zip": "<64 hex digits>",
}
