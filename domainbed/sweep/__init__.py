"""A sweep: its jobs, their folders and states (``jobs``), and the launchers that run them
(``launchers``: local, pool, Ray, Slurm). Torch-free: ``sweep status`` starts in a fraction of a
second."""

from .jobs import (Job, JobState, all_test_env_combinations, count_states, delete_incomplete,
                    job_folder_name, job_seed, jobs_to_launch, launch, make_jobs, make_train_args,
                    status_report)

__all__ = ["Job", "JobState", "all_test_env_combinations", "count_states", "delete_incomplete", "job_folder_name",
           "job_seed", "jobs_to_launch", "launch", "make_jobs", "make_train_args", "status_report"]
