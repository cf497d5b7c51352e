"""Run a DomainBed sweep: ``python -m domainbed.scripts.sweep launch|status|delete_incomplete ...``.

``launch`` runs every job that is not done: new ones, and incomplete ones, which resume from their
checkpoint. ``status`` counts done / incomplete / not launched jobs. ``delete_incomplete`` removes
the folders of incomplete jobs (to restart them from scratch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

from ..sweep import (JobState, delete_incomplete, jobs_to_launch, launch, make_jobs, make_train_args,
                      status_report)
from ..sweep.launchers import LAUNCHERS, LauncherOptions, get_launcher
from ..run.folder import RunFolder
from ..sweep.preflight import preflight
from ._cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Domain generalization: run a sweep",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["launch", "delete_incomplete", "status"])
    jobs = parser.add_argument_group("jobs (DomainBed's flags)")
    jobs.add_argument("--datasets", nargs="+", required=True)
    jobs.add_argument("--algorithms", nargs="+", required=True)
    jobs.add_argument("--task", default="domain_generalization",
                      choices=["domain_generalization", "domain_adaptation"])
    jobs.add_argument("--n_hparams_from", type=int, default=0)
    jobs.add_argument("--n_hparams", type=int, default=20)
    jobs.add_argument("--output_dir", required=True)
    jobs.add_argument("--data_dir", default="./domainbed/data")
    jobs.add_argument("--seed", type=int, default=0,
                      help="sweep seed; 0 gives DomainBed's per-job seeds, others are mixed into them")
    jobs.add_argument("--n_trials", type=int, default=3)
    jobs.add_argument("--steps", type=int, default=None)
    jobs.add_argument("--checkpoint_freq", type=int, default=None)
    jobs.add_argument("--hparams", default=None, help="JSON hparams overriding every job's")
    jobs.add_argument("--holdout_fraction", type=float, default=0.2)
    jobs.add_argument("--single_test_envs", action="store_true")
    jobs.add_argument("--deterministic", action="store_true",
                      help="every job with portable kernels (train --deterministic): the same numbers on any x86 CPU")
    jobs.add_argument("--test_envs", type=int, nargs="+", default=None,
                      help="hold out only these environments, alone and paired with every other (None: all)")
    run = parser.add_argument_group("launching")
    run.add_argument("--command_launcher", default="local", choices=sorted(LAUNCHERS))
    run.add_argument("--skip_confirmation", action="store_true")
    run.add_argument("--max_parallel", type=int, default=None,
                     help="pool: jobs at once (None: one per GPU, 1 on CPU); ray: CPUs of a Ray started here")
    run.add_argument("--gpus_per_job", "--slurm_gpus_per_job", type=float, default=0,
                     help="ray: GPUs per task (fractions share a GPU); slurm: GPUs per job")
    run.add_argument("--cpus_per_job", type=int, default=1)
    run.add_argument("--ray_address", default=None,
                     help="an existing Ray cluster ('auto', 'ray://head:10001'); None: start a local one")
    run.add_argument("--slurm_partition", default=None)
    run.add_argument("--slurm_time", type=int, default=24 * 60,
                     help="minutes per job; a job that times out is requeued and resumes")
    run.add_argument("--slurm_array_parallelism", type=int, default=256)
    run.add_argument("--slurm_executor", default="slurm", choices=["slurm", "local"],
                     help="local: submitit's LocalExecutor (no cluster; for testing)")
    run.add_argument("--slurm_log_dir", default=None, help="None: OUTPUT_DIR/submitit_logs")
    run.add_argument("--slurm_extra", default=None,
                     help="JSON of more submitit parameters, e.g. '{\"slurm_account\": \"me\"}'")
    return parser


def launcher_options(args: argparse.Namespace) -> LauncherOptions:
    extra = {}
    if args.slurm_extra:
        try:
            extra = json.loads(args.slurm_extra)
        except json.JSONDecodeError as error:
            raise ValueError(f"--slurm_extra is not valid JSON ({error.msg})") from None
        if not isinstance(extra, dict):
            raise ValueError("--slurm_extra must be a JSON object, e.g. '{\"slurm_account\": \"me\"}'")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise ValueError(f"--max_parallel must be >= 1, got {args.max_parallel}")
    return LauncherOptions(max_parallel=args.max_parallel, gpus_per_job=args.gpus_per_job,
                           cpus_per_job=args.cpus_per_job, ray_address=args.ray_address,
                           slurm_partition=args.slurm_partition, slurm_time=args.slurm_time,
                           slurm_array_parallelism=args.slurm_array_parallelism,
                           slurm_executor=args.slurm_executor, slurm_log_dir=args.slurm_log_dir,
                           slurm_extra=extra)


def confirm(question: str) -> bool:
    """Ask on a terminal; without one (CI, nohup) refuse rather than guess."""
    if not sys.stdin or not sys.stdin.isatty():
        raise ValueError("no terminal to confirm on; pass --skip_confirmation to go ahead")
    return input(f"{question} (y/n) ").strip().lower() in ("y", "yes")


def main(argv: list[str] | None = None) -> list:
    args = build_parser().parse_args(argv)
    if os.path.isfile(args.data_dir):
        raise ValueError(f"--data_dir {args.data_dir} is a file; give the folder that holds the datasets")
    options = launcher_options(args)
    launcher = get_launcher(args.command_launcher)
    args_list = make_train_args(args.datasets, args.algorithms, args.data_dir, n_trials=args.n_trials,
                                n_hparams_from=args.n_hparams_from, n_hparams=args.n_hparams,
                                task=args.task, holdout_fraction=args.holdout_fraction,
                                single_test_envs=args.single_test_envs, test_envs=args.test_envs,
                                steps=args.steps, hparams=args.hparams,
                                checkpoint_freq=args.checkpoint_freq, sweep_seed=args.seed,
                                deterministic=args.deterministic)
    jobs = make_jobs(args_list, args.output_dir)
    print(status_report(jobs))

    if args.command == "status":
        return []
    if args.command == "delete_incomplete":
        incomplete = [job for job in jobs if job.state == JobState.INCOMPLETE]
        if not incomplete:
            print("No incomplete jobs.")
            return []
        if not args.skip_confirmation and not confirm(f"Delete {len(incomplete)} incomplete job folders?"):
            print("Nothing deleted.")
            return []
        deleted, running = delete_incomplete(jobs)
        print(f"Deleted {len(deleted)} incomplete job folders.")
        if running:
            print(f"Kept {len(running)} that a process is training now.")
        return deleted

    to_launch = jobs_to_launch(jobs)
    if not to_launch:
        print("Every job is done; nothing to launch.")
        return []
    RunFolder(args.output_dir).check_writable()  # before anything runs: no job may train into nowhere
    checked = preflight([job.train_args for job in to_launch])
    runnable = {job_args["output_dir"] for job_args in checked.runnable}
    to_launch = [job for job in to_launch if job.output_dir in runnable]
    print("Checked the jobs to launch: data, hparams, run flags, pretrained weights.")
    for note in checked.notes():
        print(note)
    n_resume = sum(job.state == JobState.INCOMPLETE for job in to_launch)
    question = f"Launch {len(to_launch)} jobs ({n_resume} resuming) with '{args.command_launcher}'?"
    if not args.skip_confirmation and not confirm(question):
        print("Nothing launched.")
        return []
    results = launch(to_launch, launcher, options)
    failed = [result for result in results if result.failed]
    not_run = Counter(result.note for result in results if result.returncode is None)
    ran = len(results) - sum(not_run.values())
    print(f"{ran - len(failed)} of {len(to_launch)} jobs finished, {len(failed)} failed"
          + "".join(f", {n} not run ({why})" for why, n in sorted(not_run.items())))
    for result in failed:
        print(f"  failed (exit {result.returncode}): {result.output_dir}\n    {result.last_error_line()}")
    if failed:
        print("Launch again to resume the failed jobs (after fixing the cause), or "
              "delete_incomplete to restart them from scratch.")
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    run_main(main, (ValueError, ImportError, FileNotFoundError, PermissionError))
