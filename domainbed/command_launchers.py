"""DomainBed's ``domainbed.command_launchers``: ``REGISTRY`` of launchers that take a list of train
command strings, as DomainBed's do, and run them with ours (``domainbed.sweep.launchers``).

``REGISTRY["local"](commands)`` runs them one after another, ``"dummy"`` prints them,
``"multi_gpu"`` runs one per GPU at once (our ``pool`` launcher); ``"pool"``, ``"ray"`` and
``"slurm"`` are ours. Each command must name its ``--output_dir`` (DomainBed's sweep commands do):
the job's console output, its lock and its ``done`` file live there, so a finished command is
skipped and an interrupted one resumes when launched again. A DomainBed-style launcher function
``fn(commands)`` can be added to ``REGISTRY`` under a new name, as DomainBed allows.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Callable

from .sweep.launchers import PACKAGE_ROOT, JobSpec, LauncherOptions, get_launcher

__all__ = ["REGISTRY", "local_launcher", "dummy_launcher", "multi_gpu_launcher", "job_specs"]


def job_specs(commands: list[str]) -> list[JobSpec]:
    """Our job descriptions of DomainBed command strings (each must give ``--output_dir``).

    Leading ``VAR=value`` words become the job's environment, and a leading ``python``/``python3``
    is this interpreter (DomainBed's commands say ``python``, meaning the one running the sweep)."""
    specs = []
    for command in commands:
        parts = shlex.split(command)
        env = []
        while parts and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", parts[0]):
            env.append(tuple(parts.pop(0).split("=", 1)))
        if parts and parts[0] in ("python", "python3"):
            parts[0] = sys.executable
        output_dir = None
        for index, part in enumerate(parts):
            if part == "--output_dir" and index + 1 < len(parts):
                output_dir = parts[index + 1]
            elif part.startswith("--output_dir="):
                output_dir = part.split("=", 1)[1]
        if output_dir is None:
            raise ValueError(f"command without --output_dir (a launcher keeps each job's logs there): {command}")
        path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        specs.append(JobSpec(tuple(parts), os.path.abspath(output_dir), os.getcwd(),
                             (("PYTHONPATH", path), *env)))
    return specs


def _domainbed_style(name: str) -> Callable[[list[str]], list]:
    launcher = get_launcher(name)

    def launch(commands: list[str], options: LauncherOptions | None = None):
        return launcher(job_specs(list(commands)), options or LauncherOptions())

    launch.__name__ = f"{name}_launcher"
    launch.__doc__ = f"Run DomainBed train command strings with our '{name}' launcher."
    return launch


local_launcher = _domainbed_style("local")
dummy_launcher = _domainbed_style("dummy")
multi_gpu_launcher = _domainbed_style("multi_gpu")

REGISTRY: dict[str, Callable] = {
    "local": local_launcher,
    "dummy": dummy_launcher,
    "multi_gpu": multi_gpu_launcher,
    "pool": _domainbed_style("pool"),
    "ray": _domainbed_style("ray"),
    "slurm": _domainbed_style("slurm"),
}
