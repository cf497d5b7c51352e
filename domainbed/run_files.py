"""The files a run writes as it goes: tee'd logs, whole-line records, and trimming on resume."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

class _Tee:
    """Write to a stream and to a log file (DomainBed's out.txt / err.txt)."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a", buffering=1)

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return False

    def close(self):
        self.file.close()


@contextlib.contextmanager
def logging_to(output_dir: Path, enabled: bool):
    if not enabled:
        yield
        return
    out, err = _Tee(sys.stdout, output_dir / "out.txt"), _Tee(sys.stderr, output_dir / "err.txt")
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out.stream, err.stream
        out.close()
        err.close()


def append_record(path: Path, record: dict) -> None:
    """One whole line per record, flushed to disk before the run goes on."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def keep_records_up_to(path: Path, step: int) -> None:
    """On resume, drop records written after the saved state (they will be written again) and any
    torn last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            break
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)

