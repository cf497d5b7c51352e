"""Reading a checkpoint file: say what a file is when it is not a checkpoint, and never run code
stored in one unless asked to.

A PyTorch file is a zip archive (``torch.save`` since 1.6) or, from older code, a raw pickle.
Folders, empty files, truncated archives and files of another kind get a message saying what they
are; ``--allow_unsafe_pickle`` is offered only for a real pickle whose objects need it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_MARK = 0x80  # a pickle of protocol 2 or later starts with this byte
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first object torch.save's pre-1.6 format pickles


class UnsafeCheckpointError(RuntimeError):
    """The file needs full unpickling, which can execute code stored in it."""


def what_is_wrong(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint (a folder, empty, truncated, another kind of file), or
    None if it looks like a PyTorch file."""
    if path.is_dir():
        hint = " (a run folder? pass its model.pkl)" if (path / "model.pkl").exists() else ""
        return f"'{path}' is a folder, not a checkpoint file{hint}"
    if not path.exists():
        return f"checkpoint '{path}' does not exist"
    size = path.stat().st_size
    if size == 0:
        return f"'{path}' is empty (0 bytes): the run that wrote it may have been killed; use another checkpoint"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return f"'{path}' is a truncated or damaged PyTorch file ({size} bytes); copy it again"
        return None
    if head[:1] == bytes([PICKLE_PROTOCOL_MARK]):
        if _first_pickled_object(path) == LEGACY_TORCH_MAGIC:
            return None
        return f"'{path}' is a pickle but not a PyTorch checkpoint (torch.save did not write it)"
    return f"'{path}' is not a checkpoint (neither a PyTorch zip file nor a pickle)"


class _NoClasses(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name}")


def _first_pickled_object(path: Path):
    """The first object of a pickle stream, read without importing anything (None if it needs to)."""
    try:
        with open(path, "rb") as handle:
            return _NoClasses(handle).load()
    except Exception:  # any class, truncation, garbage: not the int a legacy torch file starts with
        return None


def _data_only_globals() -> list:
    """What a model.pkl may hold besides tensors and containers: DomainBed's ``args`` namespace and
    the NumPy scalars its random hparam draws leave in ``model_hparams``. None of them runs code."""
    import argparse

    import numpy as np

    scalar = np.float64(0).__reduce__()[0]  # the function pickles name for a NumPy scalar
    return [argparse.Namespace, scalar, np.dtype,
            *(type(np.dtype(kind)) for kind in ("float64", "float32", "int64", "int32", "bool"))]


def read_checkpoint_file(path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> dict:
    """``torch.load`` a model.pkl without executing code: tensors, containers, primitives, DomainBed's
    ``argparse.Namespace`` and NumPy scalars only. A real pickle that needs other objects loads
    only with ``allow_unsafe_pickle``; anything else fails with a message saying what it is."""
    path = Path(path)
    problem = what_is_wrong(path)
    if problem:
        raise FileNotFoundError(problem) if "does not exist" in problem else ValueError(problem)
    try:
        with torch.serialization.safe_globals(_data_only_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_unsafe_pickle:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported object"
            raise UnsafeCheckpointError(
                f"'{path}' holds objects that only full unpickling can restore, and unpickling can run "
                f"code stored in the file ({detail[:160]}); if you trust where it came from, pass "
                "--allow_unsafe_pickle") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"'{path}' is a damaged PyTorch file ({first[:120]}); copy it again") from None
    return torch.load(path, map_location="cpu", weights_only=False)
