"""Reading a checkpoint file without executing code stored in it (unless asked to)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class UnsafeCheckpointError(RuntimeError):
    """The file needs full unpickling, which can execute code stored in it."""


def read_checkpoint_file(path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> dict:
    """``torch.load`` a model.pkl without executing code: tensors, containers, primitives and
    ``argparse.Namespace`` (DomainBed's ``args``) only. Anything else needs ``allow_unsafe_pickle``."""
    import argparse
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_unsafe_pickle:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported object"
            raise UnsafeCheckpointError(
                f"'{path}' holds objects that only full unpickling can restore, and unpickling can run "
                f"code stored in the file ({detail[:160]}); if you trust where it came from, pass "
                "--allow_unsafe_pickle") from None
    return torch.load(path, map_location="cpu", weights_only=False)
