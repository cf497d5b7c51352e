"""A run's folder: the one owner of every file name in it, and the files a run writes as it goes.

DomainBed's files (``results.jsonl``, ``out.txt``, ``err.txt``, ``model.pkl``, ``done``), ours
(``checkpoint.pt`` to resume, ``tensorboard/``) and the sweep's (``sweep.lock``,
``sweep_out.txt``, ``sweep_err.txt``). Torch-free: ``collect_results`` and the launchers use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    path: Path

    RESULTS = "results.jsonl"
    DONE = "done"
    MODEL = "model.pkl"
    BEST_VAL_MODEL = "model_best_val.pkl"  # the checkpoint training-domain validation selects, if not the last
    STATE = "checkpoint.pt"
    OUT = "out.txt"
    ERR = "err.txt"
    TENSORBOARD = "tensorboard"
    LOCK = "sweep.lock"
    SWEEP_OUT = "sweep_out.txt"
    SWEEP_ERR = "sweep_err.txt"

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def done(self) -> Path:
        return self.path / self.DONE

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def out(self) -> Path:
        return self.path / self.OUT

    @property
    def err(self) -> Path:
        return self.path / self.ERR

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    @property
    def sweep_out(self) -> Path:
        return self.path / self.SWEEP_OUT

    @property
    def sweep_err(self) -> Path:
        return self.path / self.SWEEP_ERR

    @property
    def best_val_model(self) -> Path:
        return self.path / self.BEST_VAL_MODEL

    def model_at_step(self, step: int) -> Path:
        return self.path / f"model_step{step}.pkl"

    @property
    def is_done(self) -> bool:
        return self.done.exists()

    def mark_done(self) -> None:
        """Written last: a folder with ``done`` holds a finished run, never to be overwritten."""
        self.done.write_text("done\n")

    # ------------------------------------------------------------------ records
    def append_record(self, record: dict) -> None:
        """One whole line per record, flushed to disk before the run goes on."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.results, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def keep_records_up_to(self, step: int) -> None:
        """On resume, drop records written after the saved state (they will be written again) and
        any torn last line."""
        if not self.results.exists():
            return
        kept = []
        for line in self.results.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                break
        tmp = self.results.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.results)

    def read_records(self) -> list[dict]:
        """The records up to the first line that is not a whole record (a torn last line)."""
        if not self.results.exists():
            return []
        records = []
        for line in self.results.read_text().splitlines(keepends=True):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    # ------------------------------------------------------------------ logs
    ATTEMPT_HEADER = "=== attempt"

    def attempt_number(self) -> int:
        """1 + the attempts this folder's logs already record."""
        if not self.out.exists():
            return 1
        with open(self.out, errors="replace") as handle:
            return 1 + sum(line.startswith(self.ATTEMPT_HEADER) for line in handle)

    def check_writable(self) -> None:
        """Raise PermissionError (one line) if the run could not write its folder; checked before
        any work starts, so that no training is lost to a folder it cannot save into."""
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.is_file() or not os.access(existing, os.W_OK | os.X_OK):
            what = "is a file" if existing.is_file() else "is not writable"
            raise PermissionError(f"cannot write the run folder {self.path}: {existing} {what}; "
                                  "choose a writable --output_dir")

    def log_error(self, error: BaseException, expected: bool) -> None:
        """Why the run stopped, in err.txt (where DomainBed users look on a cluster): the one-line
        message of an ``expected`` error (bad input, divergence, an interruption), the traceback of
        anything else."""
        import traceback

        text = (f"error: {str(error).strip() or type(error).__name__}\n" if expected
                else "".join(traceback.format_exception(error)))
        with open(self.err, "a") as handle:
            handle.write(text)
    @contextlib.contextmanager
    def logging(self, enabled: bool = True):
        """Tee stdout/stderr into out.txt/err.txt (DomainBed's logs) while the run lives. Each
        attempt (a first start, then every resume) begins both files with a header line, so the
        part of err.txt after its last header is the last attempt's: empty if it succeeded, else
        why it stopped."""
        if not enabled:
            yield
            return
        header = f"{self.ATTEMPT_HEADER} {self.attempt_number()}, {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n"
        out, err = _Tee(sys.stdout, self.out), _Tee(sys.stderr, self.err)
        out.file.write(header)
        err.file.write(header)
        sys.stdout, sys.stderr = out, err
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out.stream, err.stream
            out.close()
            err.close()


class _Tee:
    """Write to a stream and to a log file."""

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
