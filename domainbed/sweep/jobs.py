"""A sweep: every (trial, dataset, algorithm, test environments, hparams seed) train job, its folder
and its state.

Jobs and folders follow DomainBed: a job's train args hold its dataset, algorithm, test_envs,
hparams_seed, trial_seed, a seed derived from those, and the sweep-wide data_dir, task,
holdout_fraction (and steps/hparams when given); its folder is ``output_dir/md5(sorted JSON of the
args)``. A job is *done* (its folder has ``done``), *incomplete* (a folder without ``done``) or *not
launched* (no folder). Unlike DomainBed, launching again runs incomplete jobs in place, because the
train command resumes from the ``checkpoint.pt`` it left behind.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..algorithms import LOCATIONS, canonical_name
from ..data.catalog import check_test_envs, num_environments
from ..hparams.space import parse_hparams_json
from ..moe.config import HPARAM_NAMES as MOE_HPARAM_NAMES
from ..run.folder import RunFolder
from ..seeding import seed_hash
from .launchers import PACKAGE_ROOT, JobResult, JobSpec, Launcher, LauncherOptions, is_running

TRAIN_MODULE = "domainbed.scripts.train"


class JobState(str, enum.Enum):
    DONE = "done"
    INCOMPLETE = "incomplete"
    NOT_LAUNCHED = "not launched"


def all_test_env_combinations(n_envs: int, single_test_envs: bool = False,
                          only: list[int] | None = None) -> list[list[int]]:
    """Each single test env, then (unless ``single_test_envs``) each pair containing it, in
    DomainBed's order. ``only`` restricts the envs held out alone; their pairs still reach every other
    env, because leave-one-domain-out selection for env i needs every [i, j] run."""
    chosen = set(range(n_envs) if only is None else only)
    combinations: list[list[int]] = []
    for i in range(n_envs):
        if i in chosen:
            combinations.append([i])
        if not single_test_envs:
            combinations += [[i, j] for j in range(i + 1, n_envs) if i in chosen or j in chosen]
    return combinations


def job_seed(dataset: str, algorithm: str, test_envs: list[int], hparams_seed: int, trial_seed: int,
             sweep_seed: int = 0) -> int:
    """DomainBed's per-job training seed; a non-zero sweep ``--seed`` is mixed in (0 keeps DomainBed's
    seeds, so its sweeps and ours give the same folders)."""
    if sweep_seed == 0:
        return seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)
    return seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed, sweep_seed)


def job_folder_name(train_args: dict) -> str:
    """md5 of the args as sorted JSON (``output_dir`` excluded), as DomainBed names run folders."""
    hashed = {key: value for key, value in train_args.items() if key != "output_dir"}
    return hashlib.md5(json.dumps(hashed, sort_keys=True).encode("utf-8")).hexdigest()


def make_train_args(datasets: list[str], algorithms: list[str], data_dir: str, *, n_trials: int = 3,
                    n_hparams_from: int = 0, n_hparams: int = 20, task: str = "domain_generalization",
                    holdout_fraction: float = 0.2, single_test_envs: bool = False,
                    test_envs: list[int] | None = None, steps: int | None = None,
                    hparams: str | None = None, checkpoint_freq: int | None = None,
                    sweep_seed: int = 0, deterministic: bool = False) -> list[dict]:
    """The train args of every job, in DomainBed's order (trial, dataset, algorithm, test envs,
    hparams seed). ``test_envs`` limits which environments are held out (default: all)."""
    _validate(datasets, algorithms, n_trials, n_hparams_from, n_hparams, test_envs, hparams, data_dir)
    algorithms = list(dict.fromkeys(canonical_name(a) for a in algorithms))  # an alias is the same jobs
    args_list = []
    for trial_seed in range(n_trials):
        for dataset in datasets:
            n_envs = num_environments(dataset, data_dir)
            for algorithm in algorithms:
                job_hparams = hparams_for(algorithm, dataset, hparams)
                for envs in all_test_env_combinations(n_envs, single_test_envs, test_envs):
                    for hparams_seed in range(n_hparams_from, n_hparams):
                        args = {"dataset": dataset, "algorithm": algorithm, "test_envs": envs,
                                "holdout_fraction": holdout_fraction, "hparams_seed": hparams_seed,
                                "data_dir": data_dir, "task": task, "trial_seed": trial_seed,
                                "seed": job_seed(dataset, algorithm, envs, hparams_seed, trial_seed,
                                                 sweep_seed)}
                        if steps is not None:
                            args["steps"] = steps
                        if job_hparams is not None:
                            args["hparams"] = job_hparams
                        if checkpoint_freq is not None:
                            args["checkpoint_freq"] = checkpoint_freq
                        if deterministic:  # only when asked, so other sweeps keep DomainBed's folders
                            args["deterministic"] = True
                        args_list.append(args)
    return args_list


def hparams_for(algorithm: str, dataset: str, hparams: str | None) -> str | None:
    """The ``--hparams`` of one job: the sweep's, less the MoE settings when this job's backbone has
    no MoE layers (``--algorithms ERM SFMOE --hparams '{"num_experts": 4}'`` sets SF-MoE's experts
    and leaves ERM alone). Only sweeps with MoE settings look up backbones (and import torch)."""
    overrides = parse_hparams_json(hparams)
    if not any(name in MOE_HPARAM_NAMES for name in overrides):
        return hparams
    from ..hparams.registry import hparam_space
    from ..models.backbones import is_moe_backbone

    if is_moe_backbone(hparam_space(algorithm, dataset, overrides.get("backbone")).backbone):
        return hparams
    dense = {name: value for name, value in overrides.items() if name not in MOE_HPARAM_NAMES}
    return json.dumps(dense) if dense else None


def _validate(datasets, algorithms, n_trials, n_hparams_from, n_hparams, test_envs, hparams, data_dir) -> None:
    if not datasets or not algorithms:
        raise ValueError("give at least one --datasets and one --algorithms")
    unknown = [a for a in algorithms if canonical_name(a) not in LOCATIONS]
    if unknown:
        raise ValueError(f"unknown algorithm '{unknown[0]}'; known algorithms: {', '.join(LOCATIONS)}")
    for dataset in datasets:
        check_test_envs(dataset, test_envs, data_dir)  # ValueError naming the known datasets or environments
    if n_trials < 1:
        raise ValueError(f"--n_trials must be >= 1, got {n_trials}")
    if not 0 <= n_hparams_from < n_hparams:
        raise ValueError(f"need 0 <= --n_hparams_from < --n_hparams, got {n_hparams_from} and {n_hparams}")
    parse_hparams_json(hparams)


@dataclass(frozen=True)
class Job:
    train_args: dict  # includes output_dir
    cwd: str

    @property
    def output_dir(self) -> str:
        return self.train_args["output_dir"]

    @property
    def state(self) -> JobState:
        folder = Path(self.output_dir)
        if RunFolder(folder).is_done:
            return JobState.DONE
        if folder.exists():
            return JobState.INCOMPLETE
        return JobState.NOT_LAUNCHED

    @property
    def command(self) -> tuple[str, ...]:
        command = [sys.executable, "-m", TRAIN_MODULE]
        for key, value in sorted(self.train_args.items()):
            if isinstance(value, bool):  # a switch: the flag alone, or nothing
                command += [f"--{key}"] if value else []
                continue
            command.append(f"--{key}")
            command.extend(str(v) for v in value) if isinstance(value, list) else command.append(str(value))
        return tuple(command)

    def spec(self) -> JobSpec:
        """What a launcher needs; PYTHONPATH lets the job import this package from any folder."""
        path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        return JobSpec(self.command, self.output_dir, self.cwd, (("PYTHONPATH", path),))


def make_jobs(args_list: list[dict], output_dir: str) -> list[Job]:
    """Attach each job's folder (absolute, so jobs on other nodes or folders find it)."""
    root = os.path.abspath(output_dir)
    cwd = os.getcwd()
    return [Job({**args, "output_dir": os.path.join(root, job_folder_name(args))}, cwd)
            for args in args_list]


def count_states(jobs: list[Job]) -> Counter:
    return Counter(job.state for job in jobs)


def status_report(jobs: list[Job]) -> str:
    """Totals, then one line per (dataset, algorithm)."""
    states = [(job.train_args["dataset"], job.train_args["algorithm"], job.state) for job in jobs]
    totals = Counter(state for *_, state in states)
    n_running = sum(is_running(job.output_dir) for job in jobs if job.state == JobState.INCOMPLETE)
    lines = [f"{len(jobs)} jobs: {totals[JobState.DONE]} done, {totals[JobState.INCOMPLETE]} incomplete"
             + (f" ({n_running} running now)" if n_running else "")
             + f", {totals[JobState.NOT_LAUNCHED]} not launched"]
    groups: dict[tuple[str, str], Counter] = {}
    for dataset, algorithm, state in states:
        groups.setdefault((dataset, algorithm), Counter())[state] += 1
    if groups:
        rows = [("dataset", "algorithm", "done", "incomplete", "not launched")]
        rows += [(dataset, algorithm, *(str(counts[s]) for s in JobState)) for (dataset, algorithm), counts in groups.items()]
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        for row in rows:  # names left-aligned, counts right-aligned under their headers
            lines.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                                    *(row[c].rjust(widths[c]) for c in range(2, 5))]).rstrip())
    return "\n".join(lines)


def jobs_to_launch(jobs: list[Job]) -> list[Job]:
    """Not launched and incomplete jobs (the latter resume); done ones are skipped."""
    return [job for job in jobs if job.state != JobState.DONE]


def delete_incomplete(jobs: list[Job]) -> tuple[list[Job], list[Job]]:
    """Delete the folders of incomplete jobs, except those a live process is training.
    Returns (deleted, left because running)."""
    deleted, running = [], []
    for job in jobs:
        if job.state != JobState.INCOMPLETE:
            continue
        if is_running(job.output_dir):
            running.append(job)
            continue
        shutil.rmtree(job.output_dir)
        deleted.append(job)
    return deleted, running


def launch(jobs: list[Job], launcher: Launcher, options: LauncherOptions | None = None) -> list[JobResult]:
    """Run ``jobs`` (already filtered by ``jobs_to_launch``) with ``launcher``."""
    return launcher([job.spec() for job in jobs], options or LauncherOptions())
