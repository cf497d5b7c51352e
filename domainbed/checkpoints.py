"""Saving and loading model.pkl files and resume states, atomically and without running pickled code.

``model.pkl`` keeps DomainBed's dict layout (args, model_input_shape, model_num_classes,
model_num_domains, model_hparams, model_dict) so DomainBed tooling keeps working, but ``args`` is a
plain dict, so our files load with ``torch.load(weights_only=True)``: a checkpoint passed around
cannot execute code when opened.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file in the same folder, fsync it, then rename over ``path``:
    a reader (or a resumed run) sees the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_record(algorithm, args: dict) -> dict:
    """The model.pkl dict of a trained algorithm."""
    state = algorithm.state_dict()
    return {
        "args": dict(args),
        "model_input_shape": list(algorithm.input_shape),
        "model_num_classes": algorithm.num_classes,
        "model_num_domains": algorithm.num_domains,
        "model_hparams": dict(algorithm.hparams),
        "model_dict": {key: value.detach().cpu() for key, value in state.items()},
    }


def save_model(path: str | os.PathLike, algorithm, args: dict) -> None:
    atomic_torch_save(model_record(algorithm, args), path)
