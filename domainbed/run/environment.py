"""What decides a run's numbers besides its seeds: the code, versions, device, CPU instruction set,
threads.

Recorded in every results.jsonl record (``environment``) and printed in out.txt, like DomainBed's
environment printout. The same seeds give bit-identical records on the same machine with the same
thread count; another CPU instruction set (PyTorch and oneDNN/MKL pick kernels by it) or thread
count changes float summation order and therefore the numbers.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .numerics import numeric_settings


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The instruction set PyTorch's CPU kernels dispatch to (e.g. AVX512, AVX2, DEFAULT)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        return "unknown"


PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding domainbed/


def code_version(root: Path = PACKAGE_ROOT) -> str:
    """Which code made a run: the commit of the git checkout the package runs from, with
    "+modified" when tracked files under ``domainbed/`` differ from it, else the installed package's
    version. A study runs for days while the code moves on; its records must say which code each
    run used."""
    if (root / ".git").exists():  # a directory in a clone, a file in a worktree
        try:
            commit = _git(root, "rev-parse", "--short=12", "HEAD")
            modified = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "domainbed")
            return commit + ("+modified" if modified else "")
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return f"domainbed-sfmoe {metadata.version('domainbed-sfmoe')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip()


def describe_environment(device: torch.device | str) -> dict:
    import timm
    import torchvision

    device = torch.device(device)
    described = {
        "code": code_version(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        **{key.lower(): value for key, value in numeric_settings().items() if value is not None},
    }
    if device.type == "cuda":
        described["cuda"] = torch.version.cuda
        described["gpu"] = torch.cuda.get_device_name(device)
    return described
