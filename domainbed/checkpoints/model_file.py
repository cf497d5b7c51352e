"""Our model.pkl: DomainBed's dict layout, written atomically, loadable without running pickled code.

``model.pkl`` keeps DomainBed's keys (args, model_input_shape, model_num_classes, model_num_domains,
model_hparams, model_dict) so DomainBed tooling keeps working, plus ``model_algorithm`` (the
canonical algorithm name); ``model_hparams`` is the run's full hparams, backbone and MoE settings
included, so loading rebuilds the exact model and never guesses from weight shapes. ``args`` is a
plain dict, so our files load with ``torch.load(weights_only=True)``.
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
        os.fchmod(fd, _umask_mode())  # mkstemp makes it 0600; colleagues should read models as any file
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def host_copy(obj):
    """``obj`` with every tensor copied to the CPU (a private copy even of CPU tensors): a snapshot
    that training can go on mutating the originals of while it is written."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((key, host_copy(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(value) for value in obj)
    return obj


class BackgroundWriter:
    """Writes files in one background thread, in submission order, so that a checkpoint's disk
    write (and its fsync) overlaps the next training steps instead of stalling them. ``submit``
    takes a host snapshot (``host_copy``) and returns at once after the previous write is done;
    ``flush`` waits for the last one and raises its error, if any."""

    def __init__(self):
        import concurrent.futures

        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending = None

    def submit(self, obj, path: str | os.PathLike) -> None:
        snapshot = host_copy(obj)
        self.flush()
        self._pending = self._pool.submit(atomic_torch_save, snapshot, path)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)


def _umask_mode() -> int:
    """The mode a new file gets under this process's umask (0o666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def cpu_state_dict(module) -> dict:
    """``module.state_dict()`` on the CPU, keeping one copy of tensors registered under two names
    (``featurizer.*`` and ``network.0.*`` are the same weights), so the file stores them once."""
    copies: dict[tuple, torch.Tensor] = {}
    state = {}
    for key, value in module.state_dict().items():
        identity = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if identity not in copies:
            copies[identity] = value.detach().cpu()
        state[key] = copies[identity]
    return state


def model_record(algorithm, args: dict, step: int | None = None) -> dict:
    """The model.pkl dict of a trained algorithm (its whole state: an averaging method's averaged
    weights are part of it, and ``load_checkpoint`` rebuilds the method around them); ``model_step``
    is the training step whose weights it holds."""
    return {
        "model_step": step,
        "args": dict(args),
        "model_algorithm": type(algorithm).__name__,
        "model_input_shape": list(algorithm.input_shape),
        "model_num_classes": algorithm.num_classes,
        "model_num_domains": algorithm.num_domains,
        "model_hparams": dict(algorithm.hparams),
        "model_dict": cpu_state_dict(algorithm),
    }


def save_model(path: str | os.PathLike, algorithm, args: dict, step: int | None = None) -> None:
    atomic_torch_save(model_record(algorithm, args, step), path)
