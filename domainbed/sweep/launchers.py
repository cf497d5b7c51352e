"""Ways to run a sweep's train commands: serially, in a local pool, on Ray, or on Slurm (submitit).

A launcher is a function ``(jobs, options) -> list[JobResult]``; ``LAUNCHERS`` maps the names that
``sweep --command_launcher`` accepts to them. Every launcher ends up calling ``run_job`` (in this
process, a pool thread, a Ray task or a Slurm job), which runs one train command as a subprocess so a
crashing job never takes the sweep down, sends its console output to the job folder, and holds a
lock on that folder so two sweeps never train the same job at once.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import queue
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..run.folder import RunFolder

ALREADY_RUNNING = "already running"
SLURM_MAX_ARRAY = 1000  # Slurm's default MaxArraySize is 1001
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the domainbed package
INSTALL_HINT = "pip install 'domainbed-sfmoe[sweep]'"


@dataclass(frozen=True)
class JobSpec:
    """One train command and where it writes; plain data so it pickles to Ray workers and Slurm."""
    command: tuple[str, ...]
    output_dir: str
    cwd: str
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables

    def describe(self) -> str:
        return " ".join(shlex.quote(part) for part in self.command)


@dataclass(frozen=True)
class JobResult:
    output_dir: str
    returncode: int | None  # None: not run (``note`` says why)
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.returncode not in (0, None)

    def last_error_line(self) -> str:
        """The last non-empty line the job wrote to stderr, to say why it failed."""
        path = RunFolder(self.output_dir).sweep_err
        if not path.exists():
            return self.note
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else self.note


@dataclass
class LauncherOptions:
    """Knobs of the launchers; each launcher reads the ones it understands."""
    max_parallel: int | None = None     # pool: jobs at once (default: one per GPU, 1 on CPU)
    gpus_per_job: float = 0             # ray: num_gpus per task; slurm: gpus per job
    cpus_per_job: int = 1               # ray: num_cpus per task; slurm: cpus_per_task
    ray_address: str | None = None      # an existing cluster ("auto", "ray://host:10001"); None: start one
    slurm_partition: str | None = None
    slurm_time: int = 24 * 60           # minutes per job (a timed-out job is requeued and resumes)
    slurm_array_parallelism: int = 256
    slurm_executor: str = "slurm"       # "slurm", or "local" (submitit's LocalExecutor, for tests)
    slurm_log_dir: str | None = None
    slurm_extra: dict = field(default_factory=dict)  # more submitit parameters, e.g. {"slurm_account": "x"}


# ----------------------------------------------------------------------------------------------
# running one job

def run_job(spec: JobSpec, extra_env: dict[str, str] | None = None) -> JobResult:
    """Run one train command to its end; never raises for a failing job."""
    folder = RunFolder(spec.output_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    if folder.is_done:
        return JobResult(spec.output_dir, None, "already done")
    with open(folder.lock, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return JobResult(spec.output_dir, None, ALREADY_RUNNING)
        env = {**os.environ, **dict(spec.env), **(extra_env or {})}
        # train tees its own out.txt / err.txt; these catch everything, errors before it starts included
        with open(folder.sweep_out, "a") as out, open(folder.sweep_err, "a") as err:
            try:
                # the job shares the lock: it stays held while the job lives, even if this process dies
                process = subprocess.run(spec.command, cwd=spec.cwd, env=env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, pass_fds=(lock.fileno(),))
            except OSError as error:  # e.g. the interpreter path does not exist on this node
                err.write(f"could not start the job: {error}\n")
                return JobResult(spec.output_dir, 127, str(error))
        return JobResult(spec.output_dir, process.returncode)


def is_running(output_dir: str | os.PathLike) -> bool:
    """Whether some process (on a file system with working locks) is training this job now."""
    path = RunFolder(output_dir).lock
    if not path.exists():
        return False
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


# ----------------------------------------------------------------------------------------------
# launchers

Launcher = Callable[[list[JobSpec], LauncherOptions], list[JobResult]]


def dummy_launcher(jobs: list[JobSpec], options: LauncherOptions) -> list[JobResult]:
    """Print the commands (e.g. to paste them into another scheduler); run nothing."""
    for job in jobs:
        print(f"Dummy launcher: {job.describe()}")
    return [JobResult(job.output_dir, None, "dummy") for job in jobs]


def local_launcher(jobs: list[JobSpec], options: LauncherOptions) -> list[JobResult]:
    """One job after another in this process's machine."""
    results = []
    for index, job in enumerate(jobs):
        print(f"[{index + 1}/{len(jobs)}] {job.output_dir}", flush=True)
        results.append(run_job(job))
    return results


def visible_gpus() -> list[str]:
    """GPU ids the jobs may use: CUDA_VISIBLE_DEVICES if set, else every device torch sees."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [gpu.strip() for gpu in declared.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def pool_launcher(jobs: list[JobSpec], options: LauncherOptions) -> list[JobResult]:
    """Several jobs at once on this machine: one per visible GPU (each job sees only its GPU), or
    ``max_parallel`` of them. CPU jobs share the cores evenly (OMP_NUM_THREADS), instead of each
    torch process grabbing every core."""
    gpus = visible_gpus()
    n_slots = options.max_parallel or max(len(gpus), 1)
    if n_slots < 1:
        raise ValueError(f"--max_parallel must be >= 1, got {n_slots}")
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(n_slots):
        slots.put(slot)
    threads = str(max(1, (os.cpu_count() or 1) // n_slots))

    def run_in_slot(job: JobSpec) -> JobResult:
        slot = slots.get()
        try:
            env = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": threads}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            result = run_job(job, env)
            print(f"{'failed' if result.failed else 'finished'}: {job.output_dir}", flush=True)
            return result
        finally:
            slots.put(slot)

    print(f"Pool launcher: {len(jobs)} jobs, {n_slots} at once"
          + (f" on GPUs {','.join(gpus)}" if gpus else " on CPU"), flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=n_slots) as pool:
        return list(pool.map(run_in_slot, jobs))


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # Ray colours its messages
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _import_optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise ImportError(f"the '{name}' launcher needs the {name} package: {INSTALL_HINT}") from None


def ray_launcher(jobs: list[JobSpec], options: LauncherOptions) -> list[JobResult]:
    """One Ray task per job, on an existing cluster (``ray_address``), on the Ray instance this
    process already joined, or on a local instance started (and stopped) for the sweep. Paths must
    be the same on every node (a shared file system)."""
    ray = _import_optional("ray")
    started_here = not ray.is_initialized()
    if started_here:
        init_kwargs: dict = {"address": options.ray_address, "log_to_driver": False}
        if options.ray_address is None:  # resources can only be declared for a Ray started here
            init_kwargs["include_dashboard"] = False
            if options.max_parallel:
                init_kwargs["num_cpus"] = options.max_parallel * options.cpus_per_job
        ray.init(**init_kwargs)
    try:
        # Workers start wherever Ray put them: tell them where this package is (a no-op if installed).
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)}}
        remote_run = ray.remote(num_cpus=options.cpus_per_job, num_gpus=options.gpus_per_job,
                                max_retries=0, runtime_env=runtime_env)(_ray_task)
        pending = {remote_run.remote(job): job for job in jobs}
        print(f"Ray launcher: {len(jobs)} tasks submitted", flush=True)
        results: dict[str, JobResult] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as error:  # the worker died (node lost, out of memory...)
                result = JobResult(job.output_dir, -1, f"Ray task failed: {_first_line(error)}")
            results[job.output_dir] = result
            print(f"{'failed' if result.failed else 'finished'}: {job.output_dir}", flush=True)
        return [results[job.output_dir] for job in jobs]
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(job: JobSpec) -> JobResult:
    # Ray sets CUDA_VISIBLE_DEVICES for the task's GPUs in this worker; the subprocess inherits it.
    return run_job(job)


class SubmititJob:
    """The Slurm job's callable. Being checkpointable, a job that hits the time limit or is
    preempted is requeued by submitit, and the train command resumes from its checkpoint.pt."""

    def __call__(self, job: JobSpec) -> JobResult:
        return run_job(job)

    def checkpoint(self, job: JobSpec):
        import submitit
        return submitit.helpers.DelayedSubmission(self, job)


def slurm_launcher(jobs: list[JobSpec], options: LauncherOptions) -> list[JobResult]:
    """A Slurm job array through submitit (or its local executor), then wait for every job."""
    submitit = _import_optional("submitit")
    if options.slurm_executor not in ("slurm", "local"):
        raise ValueError(f"unknown --slurm_executor '{options.slurm_executor}'; use slurm or local")
    if not jobs:
        return []
    log_dir = options.slurm_log_dir or str(Path(jobs[0].output_dir).parent / "submitit_logs")
    executor = submitit.AutoExecutor(folder=log_dir, cluster=options.slurm_executor)
    parameters = {"timeout_min": options.slurm_time, "cpus_per_task": options.cpus_per_job,
                  "gpus_per_node": int(options.gpus_per_job), "tasks_per_node": 1, "nodes": 1,
                  "name": "domainbed_sweep", "slurm_array_parallelism": options.slurm_array_parallelism}
    # the job process unpickles SubmititJob, so it must find this package (a no-op if installed)
    parameters[f"{options.slurm_executor}_setup"] = [f"export PYTHONPATH={shlex.quote(PACKAGE_ROOT)}"
                                                     "${PYTHONPATH:+:$PYTHONPATH}"]
    if options.slurm_partition:
        parameters["slurm_partition"] = options.slurm_partition
    parameters.update(options.slurm_extra)
    executor.update_parameters(**parameters)
    submitted = []
    for start in range(0, len(jobs), SLURM_MAX_ARRAY):  # Slurm refuses arrays above MaxArraySize
        submitted += executor.map_array(SubmititJob(), jobs[start:start + SLURM_MAX_ARRAY])
    print(f"Slurm launcher: {len(submitted)} jobs submitted (logs in {log_dir}); waiting", flush=True)
    results = []
    for job, handle in zip(jobs, submitted):
        try:
            result = handle.result()
        except Exception as error:  # cancelled, node failure, timed out too many times...
            result = JobResult(job.output_dir, -1, f"Slurm job {handle.job_id} failed: {_first_line(error)}")
        results.append(result)
        print(f"{'failed' if result.failed else 'finished'}: {job.output_dir}", flush=True)
    return results


LAUNCHERS: dict[str, Launcher] = {
    "dummy": dummy_launcher,
    "local": local_launcher,
    "pool": pool_launcher,
    "multi_gpu": pool_launcher,  # DomainBed's name for one job per GPU
    "ray": ray_launcher,
    "slurm": slurm_launcher,
}


def get_launcher(name: str) -> Launcher:
    try:
        return LAUNCHERS[name]
    except KeyError:
        raise ValueError(f"unknown --command_launcher '{name}'; use one of {', '.join(LAUNCHERS)}") from None
