"""``--deterministic``: the same numbers on any x86 CPU, for the same thread count.

PyTorch, MKL and oneDNN pick their kernels by the CPU's instruction set (AVX2, AVX-512...), and
kernels that vectorise differently sum floats in another order: another CPU type gives other
numbers after a few hundred steps (BENCHMARKS.md, reproducibility). These settings make all three
use their portable code paths: PyTorch's default kernels, MKL's conditional numerical
reproducibility in its compatible mode, oneDNN capped at SSE4.1. They must be set before the
libraries load, so the train command re-executes itself with them. Thread counts still change
reduction order: pin ``OMP_NUM_THREADS`` to the same value everywhere.
"""

from __future__ import annotations

import os
import sys

DETERMINISTIC_ENV = {
    "ATEN_CPU_CAPABILITY": "default",   # PyTorch's portable CPU kernels
    "MKL_CBWR": "COMPATIBLE",           # MKL: identical results on Intel and compatible CPUs
    "ONEDNN_MAX_CPU_ISA": "SSE41",      # oneDNN (convolutions, e.g. the patch embedding)
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS, for torch.use_deterministic_algorithms
}


def deterministic_environment_set() -> bool:
    return all(os.environ.get(key) == value for key, value in DETERMINISTIC_ENV.items())


def reexec_deterministic(module: str, argv: list[str]) -> None:
    """Start ``python -m module argv`` again with the deterministic settings (never returns), unless
    they are already in effect."""
    if deterministic_environment_set():
        return
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], {**os.environ, **DETERMINISTIC_ENV})


def numeric_settings() -> dict:
    """The settings above as this process has them (None where unset), for the records."""
    return {key: os.environ.get(key) for key in DETERMINISTIC_ENV if key != "CUBLAS_WORKSPACE_CONFIG"}
